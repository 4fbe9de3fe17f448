/* test_tokenizer.c - tokenizers, chat templates and text rows against goldens from the reference
 * Python stack (tests/python/make_tokenizer_goldens.py: Hugging Face `tokenizers`, transformers'
 * chat template rendering with jinja2). Exact equality everywhere: ids, decoded text, rendered text,
 * assistant masks. */
#include <jansson.h>
#include <time.h>

#include "test_util.h"
#include "text/jinja.h"

static const char *k_toks[] = {"bl-llama3", "bl-gpt2", "bl-qwen", "sp-mistral-v1", "sp-mistral-v3", "tekken"};
#define N_TOKS ((int)(sizeof k_toks / sizeof *k_toks))

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, JSON_ALLOW_NUL, &je);
    ck_assert_msg(j != NULL, "%s: %s (run tests/python/make_tokenizer_goldens.py)", path, je.text);
    return j;
}

static lt_tokenizer *load_tok(const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/tokenizers/%s", LT_TEST_DATA_DIR, name);
    lt_tokenizer *t = NULL;
    ck_assert_msg(lt_tokenizer_load(dir, &t) == LT_OK, "%s: %s", dir, lt_last_error());
    return t;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "%s:", what);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

START_TEST(test_goldens) {
    const char *name = k_toks[_i];
    lt_tokenizer *t = load_tok(name);
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/%s/goldens.json", LT_TEST_DATA_DIR, name);
    json_t *g = load_json(path), *c;
    size_t i;
    int bad = 0;
    int32_t *ids = malloc(1 << 20);
    char *text = malloc(1 << 20);
    json_array_foreach(json_object_get(g, "cases"), i, c) {
        json_t *want = json_object_get(c, "ids");
        size_t nw = json_array_size(want), n = 0;
        int32_t *w = malloc((nw + 1) * sizeof *w);
        for (size_t k = 0; k < nw; k++) w[k] = (int32_t)json_integer_value(json_array_get(want, k));
        const char *txt = json_string_value(json_object_get(c, "text"));
        if (txt) {
            size_t tl = json_string_length(json_object_get(c, "text"));
            lt_status st =
                lt_tokenizer_encode(t, txt, tl, json_is_true(json_object_get(c, "add_special")), ids, 1 << 18, &n);
            ck_assert_msg(st == LT_OK, "%s: %s", name, lt_tokenizer_last_error(t));
            if (n != nw || memcmp(ids, w, n * sizeof *w)) {
                if (bad++ < 5) {
                    fprintf(stderr, "%s case %zu: encode mismatch for \"%s\" (add_special %d)\n", name, i, txt,
                            json_is_true(json_object_get(c, "add_special")));
                    print_ids("  want", w, nw);
                    print_ids("  got ", ids, n);
                }
            }
        }
        for (int skip = 0; skip < 2; skip++) {
            const char *dw = json_string_value(json_object_get(c, skip ? "decoded_skip" : "decoded"));
            size_t dl = json_string_length(json_object_get(c, skip ? "decoded_skip" : "decoded")), len = 0;
            lt_status st = lt_tokenizer_decode(t, w, nw, skip, text, 1 << 20, &len);
            ck_assert_msg(st == LT_OK, "%s: %s", name, lt_tokenizer_last_error(t));
            if (len != dl || memcmp(text, dw, dl)) {
                if (bad++ < 5) {
                    fprintf(stderr, "%s case %zu: decode (skip %d) mismatch\n  want \"%s\"\n  got  \"%s\"\n", name, i,
                            skip, dw, text);
                    print_ids("  ids", w, nw);
                }
            }
        }
        free(w);
    }
    free(ids);
    free(text);
    json_decref(g);
    lt_tokenizer_free(t);
    ck_assert_msg(bad == 0, "%s: %d mismatches against tokenizers", name, bad);
}
END_TEST

START_TEST(test_api_edges) {
    lt_tokenizer *t = load_tok("bl-llama3");
    size_t n = 0, len = 0;
    /* the first call of a fresh handle on empty text: only the BOS */
    int32_t one[2];
    ck_assert_int_eq(lt_tokenizer_encode(t, "", 0, 1, one, 2, &n), LT_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(one[0], lt_tokenizer_token_to_id(t, "<|begin_of_text|>"));
    /* counting, too-small buffers, invalid UTF-8, bad ids */
    size_t n0 = 0;
    ck_assert_int_eq(lt_tokenizer_encode(t, "hello world", 11, 0, NULL, 0, &n0), LT_OK);
    ck_assert_int_eq(lt_tokenizer_encode(t, "hello world", 11, 1, NULL, 0, &n), LT_OK);
    ck_assert_uint_eq(n, n0 + 1); /* + BOS */
    int32_t ids[2];
    ck_assert_int_eq(lt_tokenizer_encode(t, "hello world", 11, 1, ids, 1, &n), LT_ERR_SHAPE);
    ck_assert_int_eq(lt_tokenizer_encode(t, "a\xC3(b", 4, 0, NULL, 0, &n), LT_ERR_ARGUMENT);
    ck_assert_msg(strstr(lt_tokenizer_last_error(t), "UTF-8"), "%s", lt_tokenizer_last_error(t));
    ck_assert_int_eq(lt_tokenizer_encode(t, "\xED\xA0\x80", 3, 0, NULL, 0, &n), LT_ERR_ARGUMENT); /* surrogate */
    int32_t badid = 1 << 20;
    ck_assert_int_eq(lt_tokenizer_decode(t, &badid, 1, 0, NULL, 0, &len), LT_ERR_ARGUMENT);
    ck_assert_msg(strstr(lt_tokenizer_last_error(t), "not in the vocabulary"), "%s", lt_tokenizer_last_error(t));
    ck_assert_int_eq(lt_tokenizer_special_id(t, LT_SPECIAL_BOS), lt_tokenizer_token_to_id(t, "<|begin_of_text|>"));
    ck_assert_int_eq(lt_tokenizer_special_id(t, LT_SPECIAL_EOS), lt_tokenizer_token_to_id(t, "<|eot_id|>"));
    ck_assert_int_eq(lt_tokenizer_special_id(t, LT_SPECIAL_PAD), -1);
    ck_assert(lt_tokenizer_is_special(t, lt_tokenizer_token_to_id(t, "<|eot_id|>")));
    ck_assert_str_eq(lt_tokenizer_id_to_token(t, lt_tokenizer_token_to_id(t, "<|eot_id|>")), "<|eot_id|>");
    ck_assert_int_eq(lt_tokenizer_vocab_size(t), 3005);
    lt_tokenizer_free(t);
    lt_tokenizer_free(NULL);
}
END_TEST

/* malformed tokenizer.json files give clear statuses */
START_TEST(test_malformed) {
    char dir[256], path[512];
    tu_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    static const struct {
        const char *json;
        lt_status st;
        const char *msg;
    } cases[] = {
        {"{\"model\": ", LT_ERR_JSON, "line"},
        {"[1,2]", LT_ERR_FORMAT, "not a JSON object"},
        {"{}", LT_ERR_FORMAT, "\"model\""},
        {"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", LT_ERR_UNSUPPORTED, "Unigram"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]}}", LT_ERR_FORMAT,
         "merges[0]"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": \"x\"}, \"merges\": []}}", LT_ERR_FORMAT,
         "\"b\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": "
         "\"Split\", "
         "\"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}}",
         LT_ERR_FORMAT, "does not compile"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"normalizer\": {\"type\": "
         "\"BertNormalizer\"}}",
         LT_ERR_UNSUPPORTED, "BertNormalizer"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [{\"id\": -1, "
         "\"content\": \"x\"}]}",
         LT_ERR_FORMAT, "added_tokens[0]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tu_write_text(path, cases[i].json);
        lt_tokenizer *t = NULL;
        lt_status st = lt_tokenizer_load(dir, &t);
        ck_assert_msg(st == cases[i].st, "case %zu: status %d (%s)", i, st, lt_last_error());
        ck_assert_ptr_null(t);
        ck_assert_msg(strstr(lt_last_error(), cases[i].msg), "case %zu: \"%s\" lacks \"%s\"", i, lt_last_error(),
                      cases[i].msg);
    }
    lt_tokenizer *t = NULL;
    snprintf(path, sizeof path, "%s/missing", dir);
    ck_assert_int_eq(lt_tokenizer_load(path, &t), LT_ERR_IO);
    ck_assert_int_eq(lt_tokenizer_load(NULL, &t), LT_ERR_ARGUMENT);
}
END_TEST

/* chat templates: rendered text, raise_exception errors, and assistant token masks equal transformers' */
START_TEST(test_chat_goldens) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizers/chat/goldens.json", LT_TEST_DATA_DIR);
    json_t *g = load_json(path), *c;
    size_t i;
    int bad = 0, n_cases = 0, n_masks = 0;
    json_array_foreach(json_object_get(g, "cases"), i, c) {
        const char *name = json_string_value(json_object_get(c, "template"));
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/tokenizers/chat/%s", LT_TEST_DATA_DIR, name);
        lt_tokenizer *t = NULL;
        ck_assert_msg(lt_tokenizer_load(dir, &t) == LT_OK, "%s", lt_last_error());
        char *msgs = json_dumps(json_object_get(c, "messages"), JSON_ENCODE_ANY);
        int agp = json_is_true(json_object_get(c, "add_generation_prompt"));
        const char *text = NULL;
        size_t len = 0;
        lt_status st = lt_tokenizer_render_chat(t, msgs, agp, &text, &len);
        json_t *want = json_object_get(c, "text");
        /* goldens made on another day: their strftime_now date becomes today's */
        char today[64];
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        strftime(today, sizeof today, "%d %b %Y", &tm);
        const char *gday = json_string_value(json_object_get(g, "today"));
        json_t *want_today = NULL;
        if (want && gday && strcmp(gday, today) && strstr(json_string_value(want), gday)) {
            const char *w = json_string_value(want), *hit = strstr(w, gday);
            char *fixed = malloc(strlen(w) + 64);
            sprintf(fixed, "%.*s%s%s", (int)(hit - w), w, today, hit + strlen(gday));
            want = want_today = json_string(fixed);
            free(fixed);
        }
        n_cases++;
        if (json_object_get(c, "error")) {
            if (st != LT_ERR_DATA ||
                !strstr(lt_tokenizer_last_error(t), json_string_value(json_object_get(c, "error")))) {
                bad++;
                fprintf(stderr, "%s conv %d agp %d: expected the error \"%s\", got status %d: %s\n", name,
                        (int)json_integer_value(json_object_get(c, "conversation")), agp,
                        json_string_value(json_object_get(c, "error")), st, st ? lt_tokenizer_last_error(t) : text);
            }
        } else if (st != LT_OK || len != json_string_length(want) || memcmp(text, json_string_value(want), len)) {
            bad++;
            fprintf(stderr, "%s conv %d agp %d: render mismatch (status %d %s)\n--- want\n%s\n--- got\n%s\n---\n", name,
                    (int)json_integer_value(json_object_get(c, "conversation")), agp, st,
                    st ? lt_tokenizer_last_error(t) : "", json_string_value(want), st ? "" : text);
        } else if (json_object_get(c, "assistant_masks")) {
            json_t *wi = json_object_get(c, "ids"), *wm = json_object_get(c, "assistant_masks");
            size_t n = json_array_size(wi), got = 0;
            int32_t *ids = malloc((n + 1) * sizeof *ids), *mask = malloc((n + 1) * sizeof *mask);
            st = lt_tokenizer_encode_chat(t, msgs, agp, ids, mask, n, &got);
            int ok = st == LT_OK && got == n;
            for (size_t k = 0; ok && k < n; k++)
                ok = ids[k] == json_integer_value(json_array_get(wi, k)) &&
                     mask[k] == json_integer_value(json_array_get(wm, k));
            if (!ok) {
                bad++;
                fprintf(stderr, "%s conv %d agp %d: encode_chat ids/mask mismatch (status %d %s)\n", name,
                        (int)json_integer_value(json_object_get(c, "conversation")), agp, st,
                        st ? lt_tokenizer_last_error(t) : "");
                for (size_t k = 0; st == LT_OK && k < n && k < got; k++)
                    fprintf(stderr, " %d/%d:%d/%d", ids[k], (int)json_integer_value(json_array_get(wi, k)), mask[k],
                            (int)json_integer_value(json_array_get(wm, k)));
                fprintf(stderr, "\n");
            }
            n_masks++;
            free(ids);
            free(mask);
        }
        free(msgs);
        json_decref(want_today);
        lt_tokenizer_free(t);
    }
    json_decref(g);
    ck_assert_msg(n_cases > 100 && n_masks > 20, "too few cases (%d, %d masks)", n_cases, n_masks);
    ck_assert_msg(bad == 0, "%d of %d chat cases differ from transformers", bad, n_cases);
}
END_TEST

/* dataset rows -> ids + labels, as TRL's SFTTrainer prepares them (make_row_goldens) */
START_TEST(test_row_goldens) {
    char path[1024], dir[1024];
    snprintf(path, sizeof path, "%s/tokenizers/chat/rows.json", LT_TEST_DATA_DIR);
    snprintf(dir, sizeof dir, "%s/tokenizers/chat/llama3_training", LT_TEST_DATA_DIR);
    json_t *g = load_json(path), *c;
    lt_tokenizer *t = NULL;
    ck_assert_msg(lt_tokenizer_load(dir, &t) == LT_OK, "%s", lt_last_error());
    size_t i;
    int bad = 0;
    json_array_foreach(json_object_get(g, "cases"), i, c) {
        char *row = json_dumps(json_object_get(c, "row"), 0);
        json_t *wi = json_object_get(c, "ids"), *wl = json_object_get(c, "labels");
        size_t n = json_array_size(wi), got = 0;
        int32_t ids[4096], labels[4096];
        lt_status st = lt_tokenizer_encode_row(t, row, NULL, ids, labels, 4096, &got);
        int ok = st == LT_OK && got == n;
        for (size_t k = 0; ok && k < n; k++)
            ok = ids[k] == json_integer_value(json_array_get(wi, k)) &&
                 labels[k] == json_integer_value(json_array_get(wl, k));
        if (!ok) {
            bad++;
            fprintf(stderr, "row %s: mismatch (status %d %s, %zu vs %zu tokens)\n", row, st,
                    st ? lt_tokenizer_last_error(t) : "", got, n);
            for (size_t k = 0; st == LT_OK && k < got && k < n; k++)
                fprintf(stderr, " %d/%d:%d/%d", ids[k], (int)json_integer_value(json_array_get(wi, k)), labels[k],
                        (int)json_integer_value(json_array_get(wl, k)));
            fprintf(stderr, "\n");
        }
        if (st == LT_OK && n > 3) { /* truncation keeps the start */
            lt_text_params p;
            lt_text_params_init(&p, sizeof p);
            p.max_len = 3;
            int32_t i3[3], l3[3];
            ck_assert_int_eq(lt_tokenizer_encode_row(t, row, &p, i3, l3, 3, &got), LT_OK);
            ck_assert_uint_eq(got, 3);
            ck_assert(!memcmp(i3, ids, sizeof i3) && !memcmp(l3, labels, sizeof l3));
        }
        free(row);
    }
    /* bad rows */
    size_t got;
    ck_assert_int_eq(lt_tokenizer_encode_row(t, "{\"foo\": 1}", NULL, NULL, NULL, 0, &got), LT_ERR_DATA);
    ck_assert_msg(strstr(lt_tokenizer_last_error(t), "none of the dataset shapes"), "%s", lt_tokenizer_last_error(t));
    ck_assert_int_eq(lt_tokenizer_encode_row(t, "{\"text\": ", NULL, NULL, NULL, 0, &got), LT_ERR_JSON);
    ck_assert_int_eq(lt_tokenizer_encode_row(t, "{\"prompt\": \"a\", \"completion\": [1]}", NULL, NULL, NULL, 0, &got),
                     LT_ERR_DATA);
    ck_assert_int_eq(lt_tokenizer_encode_row(t, "{\"messages\": [{\"content\": \"x\"}]}", NULL, NULL, NULL, 0, &got),
                     LT_ERR_DATA);
    ck_assert_int_eq(lt_tokenizer_encode_row(t, "{\"text\": \"\\udc00\"}", NULL, NULL, NULL, 0, &got), LT_ERR_JSON);
    lt_tokenizer_free(t);
    json_decref(g);
    ck_assert_msg(bad == 0, "%d rows differ from the TRL preparation", bad);
}
END_TEST

/* templates this engine cannot render are clear errors */
START_TEST(test_chat_unsupported) {
    char dir[256], path[512];
    tu_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char src[1024];
    snprintf(src, sizeof src, "%s/tokenizers/bl-llama3/tokenizer.json", LT_TEST_DATA_DIR);
    tu_copy_file(src, path);
    static const struct {
        const char *tmpl;
        lt_status st;
        const char *msg;
    } cases[] = {
        {"{{ messages | urlize }}", LT_ERR_UNSUPPORTED, "urlize"},
        {"{% macro f(x) %}{{ x }}{% endmacro %}{{ f(1, 2) }}", LT_ERR_DATA, "takes not more than 1 argument"},
        {"{% macro f(x) %}{{ x }}{% endmacro %}{{ f(y=2) }}", LT_ERR_DATA, "no keyword argument 'y'"},
        {"{% for m in messages %}{{ m.role }}", LT_ERR_UNSUPPORTED, "endfor"},
        {"{{ raise_exception('no way') }}", LT_ERR_DATA, "no way"},
        {"{{ messages[0].content.encode() }}", LT_ERR_UNSUPPORTED, "encode"},
        {"{% include 'x' %}", LT_ERR_UNSUPPORTED, "include"},
        {"{% for m in messages recursive %}{{ loop(m) }}{% endfor %}", LT_ERR_UNSUPPORTED, "recursive"},
        {"{{ 1 + 'a' }}", LT_ERR_DATA, "unsupported operand"},
        {"{{ messages.append(1) }}", LT_ERR_DATA, "sandbox"},
        {"{{ 'x' * 100000000 }}", LT_ERR_DATA, "limit"},
        {"{{ range(1000000) | length }}", LT_ERR_DATA, "MAX_RANGE"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *cfg = json_pack("{s:s}", "chat_template", cases[i].tmpl);
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        json_dump_file(cfg, path, 0);
        json_decref(cfg);
        lt_tokenizer *t = NULL;
        ck_assert_int_eq(lt_tokenizer_load(dir, &t), LT_OK);
        const char *text;
        size_t len;
        lt_status st = lt_tokenizer_render_chat(t, "[{\"role\": \"user\", \"content\": \"hi\"}]", 0, &text, &len);
        ck_assert_msg(st == cases[i].st && strstr(lt_tokenizer_last_error(t), cases[i].msg),
                      "case %zu: status %d, \"%s\"", i, st, lt_tokenizer_last_error(t));
        lt_tokenizer_free(t);
    }
    /* no chat template at all */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    unlink(path);
    lt_tokenizer *t = NULL;
    ck_assert_int_eq(lt_tokenizer_load(dir, &t), LT_OK);
    const char *text;
    ck_assert_int_eq(lt_tokenizer_render_chat(t, "[]", 0, &text, NULL), LT_ERR_MISSING);
    ck_assert_int_eq(lt_tokenizer_render_chat(t, "[", 0, &text, NULL), LT_ERR_JSON);
    lt_tokenizer_free(t);
}
END_TEST

/* the CLI: tokenize / detokenize / render / data check, and train + eval on each text row shape */
START_TEST(test_cli) {
    char dir[256], cmd[4096], path[512];
    tu_tempdir(dir, sizeof dir);
    const char *T = LT_TEST_DATA_DIR "/tokenizers";
    snprintf(path, sizeof path, "%s/texts.txt", dir);
    tu_write_text(path, "Hello world\n<|eot_id|> x \xE6\x97\xA5\n\nlast");
    int status;
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer %s/bl-llama3 --text-file %s --add-special", LT_CLI, T, path);
    char *out = tu_run(cmd, &status);
    ck_assert_int_eq(status, 0);
    /* one JSON array per line (4 lines, the empty one gives the BOS only), matching the API */
    int lines = 0;
    for (char *p = out; *p; p++) lines += *p == '\n';
    ck_assert_int_eq(lines, 4);
    lt_tokenizer *t = load_tok("bl-llama3");
    int32_t ids[64];
    size_t n;
    ck_assert_int_eq(lt_tokenizer_encode(t, "Hello world", 11, 1, ids, 64, &n), LT_OK);
    char want[512] = "[";
    for (size_t i = 0; i < n; i++) snprintf(want + strlen(want), sizeof want - strlen(want), i ? ", %d" : "%d", ids[i]);
    strcat(want, "]\n");
    ck_assert_msg(!strncmp(out, want, strlen(want)), "%s vs %s", out, want);
    ck_assert_msg(strstr(out, "\n[3000]\n"), "%s", out); /* the empty line: BOS only */
    free(out);
    /* round trip through detokenize */
    snprintf(
        cmd, sizeof cmd,
        "%s tokenize --tokenizer %s/bl-llama3 --text-file %s | %s detokenize --tokenizer %s/bl-llama3 --ids-file -",
        LT_CLI, T, path, LT_CLI, T);
    out = tu_run(cmd, &status);
    ck_assert_int_eq(status, 0);
    ck_assert_str_eq(out, "\"Hello world\"\n\"<|eot_id|> x \xE6\x97\xA5\"\n\"\"\n\"last\"\n");
    free(out);
    lt_tokenizer_free(t);
    /* invalid UTF-8 is a clear error naming the line */
    tu_write_text(path, "ok\nbad \xC3(\n");
    snprintf(cmd, sizeof cmd, "%s tokenize --tokenizer %s/bl-llama3 --text-file %s", LT_CLI, T, path);
    out = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(out, "line 2") && strstr(out, "UTF-8"), "%s", out);
    free(out);
    /* render */
    snprintf(path, sizeof path, "%s/m.json", dir);
    tu_write_text(path, "[{\"role\": \"user\", \"content\": \"hi\"}]");
    snprintf(cmd, sizeof cmd, "%s render --tokenizer %s/chat/llama3 --messages %s --add-generation-prompt", LT_CLI, T,
             path);
    out = tu_run(cmd, &status);
    ck_assert_int_eq(status, 0);
    ck_assert_str_eq(out, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>"
                          "assistant<|end_header_id|>\n\n");
    free(out);
    snprintf(cmd, sizeof cmd, "%s render --tokenizer %s/chat/gemma --messages %s", LT_CLI, T, path);
    tu_write_text(path, "[{\"role\": \"system\", \"content\": \"x\"}]");
    out = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(out, "System role not supported"), "%s", out);
    free(out);
    /* train and eval on every text shape, tokenizer given with --tokenizer */
    char data[512];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    tu_write_text(data, "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n"
                        "{\"prompt\": \"What is 2+2?\", \"completion\": \" 4.\"}\n"
                        "{\"messages\": [{\"role\": \"user\", \"content\": \"Say hi\"}, {\"role\": \"assistant\", "
                        "\"content\": \"Hello!\"}]}\n"
                        "{\"prompt\": \"Translate: cat ->\", \"chosen\": \" chat\", \"rejected\": \" dog\"}\n"
                        "{\"prompt\": \"How can I help?\", \"completion\": \" no\", \"label\": false}\n"
                        "{\"prompt\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}], \"completion\": "
                        "[{\"role\": \"assistant\", \"content\": \"4\"}]}\n");
    snprintf(cmd, sizeof cmd,
             "%s train --model %s/models/llama-basic --tokenizer %s/tiny --data %s --eval-data %s --out %s/o --steps 3 "
             "--batch 2 --threads 1 --pack --seq 64 --json",
             LT_CLI, LT_TEST_DATA_DIR, T, data, data, dir);
    out = tu_run(cmd, &status);
    ck_assert_msg(status == 0 && strstr(out, "\"loss\""), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s eval --model %s/models/llama-basic --tokenizer %s/tiny --data %s --threads 1 --json",
             LT_CLI, LT_TEST_DATA_DIR, T, data);
    out = tu_run(cmd, &status);
    ck_assert_msg(status == 0 && strstr(out, "\"tokens\""), "%s", out);
    free(out);
    /* a text file with a model directory that has no tokenizer: clear error */
    snprintf(cmd, sizeof cmd, "%s train --model %s/models/llama-basic --data %s --out %s/o2 --steps 1", LT_CLI,
             LT_TEST_DATA_DIR, data, dir);
    out = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(out, "tokenizer.json"), "%s", out);
    free(out);
    /* data check: duplicates, near duplicates, eval overlap, long rows, template problems */
    char ev[512];
    snprintf(ev, sizeof ev, "%s/e.jsonl", dir);
    tu_write_text(
        data, "{\"text\": \"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi\"}\n"
              "{\"text\": \"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi\"}\n"
              "{\"text\": \"alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron rho\"}\n"
              "{\"text\": \"one two three four five six seven eight nine ten eleven twelve thirteen fourteen\"}\n"
              "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}]}\n"
              "{\"question\": \"?\"}\n");
    tu_write_text(ev, "{\"text\": \"zero one two three four five six seven eight nine ten eleven twelve thirteen\"}\n");
    snprintf(cmd, sizeof cmd, "%s data check --data %s --eval %s --tokenizer %s/tiny --seq 20 --json", LT_CLI, data, ev,
             T);
    out = tu_run(cmd, &status);
    ck_assert_int_eq(status, 0);
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_msg(j != NULL, "%s", out);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "rows")), 6);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "exact_duplicates")), 1);
    ck_assert_int_ge(json_integer_value(json_object_get(j, "near_duplicate_pairs")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "eval_overlap_rows")), 1);
    ck_assert_int_ge(json_integer_value(json_object_get(j, "rows_over_seq")), 3);
    char *probs = json_dumps(json_object_get(j, "problems"), 0);
    ck_assert_msg(strstr(probs, "line 5") && strstr(probs, "no assistant message") && strstr(probs, "line 6") &&
                      strstr(probs, "no known dataset shape"),
                  "%s", probs);
    free(probs);
    json_decref(j);
    free(out);
}
END_TEST

/* packing: every token of every (truncated) sequence lands once, positions restart, rows are full first */
START_TEST(test_pack) {
    int32_t lens[] = {5, 3, 9, 1, 0, 4, 7};
    const int n = 7, T = 8;
    int32_t ids[64], labels[64], total = 0;
    for (int i = 0; i < n; i++)
        for (int t = 0; t < lens[i]; t++) {
            ids[total] = 1000 * (i + 1) + t;
            labels[total] = ids[total] + 1;
            total++;
        }
    int32_t rows = 0;
    ck_assert_int_eq(lt_pack_sequences(ids, labels, lens, n, T, 0, NULL, NULL, NULL, 0, &rows), LT_OK);
    ck_assert_int_eq(rows, 4); /* 8 (9 truncated), 7+1, 5+3, 4 */
    int32_t oi[64], ol[64], op[64];
    ck_assert_int_eq(lt_pack_sequences(ids, labels, lens, n, T, 0, oi, ol, op, rows - 1, &rows), LT_ERR_SHAPE);
    ck_assert_int_eq(lt_pack_sequences(ids, labels, lens, n, T, 7, oi, ol, op, rows, &rows), LT_OK);
    int seen[8] = {0};
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < T; t++) {
            int32_t id = oi[r * T + t], pos = op[r * T + t];
            if (id == 7 && ol[r * T + t] == -100) continue; /* padding */
            int seq = id / 1000 - 1, k = id % 1000;
            ck_assert_int_eq(pos, k);
            ck_assert_int_eq(ol[r * T + t], k == 0 ? -100 : id + 1);
            ck_assert_int_lt(k, T);
            seen[seq]++;
        }
    for (int i = 0; i < n; i++) ck_assert_int_eq(seen[i], lens[i] < T ? lens[i] : T);
    ck_assert_int_eq(lt_pack_sequences(ids, NULL, lens, n, 0, 0, NULL, NULL, NULL, 0, &rows), LT_ERR_ARGUMENT);
    int32_t neg = -1;
    ck_assert_int_eq(lt_pack_sequences(ids, NULL, &neg, 1, 4, 0, NULL, NULL, NULL, 0, &rows), LT_ERR_ARGUMENT);
    ck_assert_msg(strstr(lt_last_error(), "negative"), "%s", lt_last_error());
}
END_TEST

/* Rows that would train on nothing are errors that say why (TRL trains on an all-zero mask silently):
 * through lt_tokenizer_encode_row, and through `loratune train` (file, line and tokenizer named) and
 * `data check` (listed before training starts). */
START_TEST(test_empty_masks) {
    char dir[256], path[512], src[1024];
    tu_tempdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    snprintf(src, sizeof src, "%s/tokenizers/bl-llama3/tokenizer.json", LT_TEST_DATA_DIR);
    tu_copy_file(src, path);
    static const char *const drops_assistant =
        "{% for m in messages %}{% if m.role != 'assistant' %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}";
    static const struct {
        const char *tmpl, *row, *msg;
    } cases[] = {
        {drops_assistant,
         "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}",
         "renders no text for this row's assistant messages"},
        {"{% for m in messages %}{% generation %}{% endgeneration %}{{ m.content }}{% endfor %}",
         "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}",
         "none of them rendered"},
        {drops_assistant, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "no assistant message"},
        {drops_assistant,
         "{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"completion\": [{\"role\": \"assistant\", "
         "\"content\": \"yo\"}]}",
         "the completion adds no token"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *cfg = json_pack("{s:s,s:s}", "chat_template", cases[i].tmpl, "eos_token", "<|eot_id|>");
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        json_dump_file(cfg, path, 0);
        json_decref(cfg);
        lt_tokenizer *t = NULL;
        ck_assert_int_eq(lt_tokenizer_load(dir, &t), LT_OK);
        size_t n = 0;
        lt_status st = lt_tokenizer_encode_row(t, cases[i].row, NULL, NULL, NULL, 0, &n);
        ck_assert_msg(st == LT_ERR_DATA && strstr(lt_tokenizer_last_error(t), cases[i].msg), "case %zu: status %d, %s",
                      i, st, lt_tokenizer_last_error(t));
        /* a row that says it has nothing to imitate is no error: label false */
        st = lt_tokenizer_encode_row(t, "{\"prompt\": \"a\", \"completion\": \" b\", \"label\": false}", NULL, NULL,
                                     NULL, 0, &n);
        ck_assert_int_eq(st, LT_OK);
        lt_tokenizer_free(t);
    }
    /* the CLI: train stops on the row, naming it and the tokenizer; data check lists it first */
    json_t *cfg = json_pack("{s:s,s:s}", "chat_template", drops_assistant, "eos_token", "<|eot_id|>");
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_dump_file(cfg, path, 0);
    json_decref(cfg);
    char data[512], cmd[4096];
    snprintf(data, sizeof data, "%s/d.jsonl", dir);
    tu_write_text(data, "{\"text\": \"plain text\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, "
                        "{\"role\": \"assistant\", \"content\": \"yo\"}]}\n");
    snprintf(cmd, sizeof cmd, "%s train --model %s/models/llama-basic --tokenizer %s --data %s --out %s/o --steps 1",
             LT_CLI, LT_TEST_DATA_DIR, dir, data, dir);
    int status;
    char *out = tu_run_stderr(cmd, &status);
    ck_assert_int_ne(status, 0);
    ck_assert_msg(strstr(out, "d.jsonl:2:") && strstr(out, "assistant mask is empty") && strstr(out, dir), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s data check --data %s --tokenizer %s", LT_CLI, data, dir);
    out = tu_run(cmd, &status);
    ck_assert_int_eq(status, 0);
    ck_assert_msg(strstr(out, "line 2: nothing to learn: the assistant mask is empty") &&
                      strstr(out, "train stops here"),
                  "%s", out);
    free(out);
}
END_TEST

/* Hostile templates end in a clear status naming the limit (src/text/jinja.h), quickly, without a crash:
 * D2 of issue 21, a 40 KB template of 20,000 nested parentheses (and nested lists, unary minus, `not`,
 * if blocks, macro recursion) overflowed the C stack; D3, 26 nested loops of 2 items (911 bytes), rendered
 * for 39-73 s. Each must now end in a status naming its limit, the loops in well under 20 s even under ASan on
 * a loaded machine (about 0.3 s natively). */
static char *repeat(const char *a, int n, const char *mid, const char *b) {
    size_t la = strlen(a), lm = strlen(mid), lb = strlen(b);
    char *s = malloc(la * (size_t)n + lm + lb * (size_t)n + 1), *p = s;
    for (int i = 0; i < n; i++, p += la) memcpy(p, a, la);
    memcpy(p, mid, lm);
    p += lm;
    for (int i = 0; i < n; i++, p += lb) memcpy(p, b, lb);
    *p = 0;
    return s;
}

START_TEST(test_chat_limits) {
    char *deep[] = {
        repeat("(", 20000, "1", ")"),
        repeat("[", 20000, "", "]"),
        repeat("-", 20000, "1", ""),
        repeat("not ", 20000, "1", ""),
        repeat("{% if 1 %}", 20000, "x", "{% endif %}"),
        strdup("{% macro f(k) %}{% if k > 0 %}{{ f(k - 1) }}{% endif %}{% endmacro %}{{ f(100000) }}"),
    };
    const char *expect[] = {"nests deeper", "nests deeper", "nests deeper",
                            "nests deeper", "nests deeper", "nest deeper"};
    json_t *ctx = json_pack("{s:[]}", "messages");
    for (int i = 0; i < 6; i++) {
        char *t = i < 4 ? NULL : deep[i];
        if (i < 4) { /* an expression: {{ ... }} */
            t = malloc(strlen(deep[i]) + 8);
            sprintf(t, "{{ %s }}", deep[i]);
        }
        lt_buf out = {0};
        lt_error err = {0};
        lt_status st = lt_jinja_render(t, strlen(t), ctx, &out, NULL, &err, NULL, NULL);
        ck_assert_msg(st != LT_OK && strstr(err.msg, expect[i]) && strstr(err.msg, "1000"), "case %d: status %d, %s", i,
                      st, err.msg);
        free(out.p);
        if (t != deep[i]) free(t);
        free(deep[i]);
    }
    /* 26 nested loops over range(2): 2^26 iterations; the step budget stops it */
    lt_buf loops = {0};
    for (int i = 0; i < 26; i++) {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "{%% for i%d in range(2) %%}", i);
        lt_buf_puts(&loops, tmp);
    }
    lt_buf_puts(&loops, "x");
    for (int i = 0; i < 26; i++) lt_buf_puts(&loops, "{% endfor %}");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    lt_buf out = {0};
    lt_error err = {0};
    lt_status st = lt_jinja_render(loops.p, loops.n, ctx, &out, NULL, &err, NULL, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double secs = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    ck_assert_msg(st == LT_ERR_DATA && strstr(err.msg, "steps"), "status %d, %s", st, err.msg);
    ck_assert_msg(secs < 20.0, "the runaway template took %.1f s to stop (it ran for 39-73 s before the limit)", secs);
    free(out.p);
    free(loops.p);
    json_decref(ctx);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_goldens, 0, N_TOKS);
    tcase_add_test(tc, test_api_edges);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_chat_goldens);
    tcase_add_test(tc, test_row_goldens);
    tcase_add_test(tc, test_chat_unsupported);
    tcase_add_test(tc, test_chat_limits);
    tcase_add_test(tc, test_empty_masks);
    tcase_add_test(tc, test_cli);
    tcase_add_test(tc, test_pack);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(suite)
