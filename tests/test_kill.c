/*
 * test_kill.c - `loratune train` killed with SIGKILL at random moments (a seeded, bounded number of
 * times): every checkpoint it leaves loads, and resuming from the newest one in the same run
 * directory ends bit for bit where a run that was never killed ends (adapter, checkpoint-final, the
 * losses of metrics.jsonl, each step once), with no temporary left behind. A kill may land in a step,
 * in a checkpoint save (one every step) or in the final adapter save. Every other run is killed at a
 * moment counted from its first checkpoint, so some runs resume from a checkpoint whatever the machine's
 * speed (a kill timed only from the start can land in the start-up on a slow or loaded machine).
 *   LT_KILL_RUNS  the number of killed runs (default 6); LT_KILL_SEED  the seed of the moments (default 1)
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "loratune_experimental.h"
#include "test_util.h"

static const char k_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 64,"
    " \"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"rope_theta\": 10000.0,"
    " \"rms_norm_eps\": 1e-5, \"max_position_embeddings\": 128, \"tie_word_embeddings\": false}";
#define STEPS 8

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* start `loratune train` into out (resuming from `resume` when given); returns the pid */
static pid_t start_train(const char *root, const char *out, const char *resume) {
    char model[600], data[600], steps[16];
    snprintf(model, sizeof model, "%s/model", root);
    snprintf(data, sizeof data, "%s/data.jsonl", root);
    snprintf(steps, sizeof steps, "%d", STEPS);
    const char *argv[40] = {LT_CLI,    "train", "--model",     model,    "--data",       data, "--out",     out,
                            "--steps", steps,   "--batch",     "2",      "--grad-accum", "2",  "--rank",    "4",
                            "--lr",    "5e-3",  "--scheduler", "cosine", "--warmup",     "2",  "--dropout", "0.1",
                            "--seed",  "5",     "--threads",   "2",      "--save-every", "1",  "--quiet",   NULL};
    int n = 0;
    while (argv[n]) n++;
    if (resume) {
        argv[n++] = "--resume";
        argv[n++] = resume;
        argv[n] = NULL;
    }
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        execv(LT_CLI, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* poll until out/checkpoint-1 exists or the child exits: 1 when it exited (its status in *st) */
static int wait_first_checkpoint(pid_t pid, const char *out, int *st) {
    char p[800];
    snprintf(p, sizeof p, "%s/checkpoint-1", out);
    for (;;) {
        struct stat sb;
        if (stat(p, &sb) == 0) return 0;
        if (waitpid(pid, st, WNOHANG) == pid) return 1;
        const struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

static int wait_status(pid_t pid) {
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return st;
}

static void same_file(const char *a, const char *b, const char *what) {
    ck_assert_msg(tu_same_file(a, b), "%s: %s differs from %s", what, b, a);
}

/* the losses of metrics.jsonl by step; every step 1..STEPS exactly once */
static void losses(const char *out, double *loss) {
    char p[700];
    snprintf(p, sizeof p, "%s/metrics.jsonl", out);
    char *text = tu_slurp(p, NULL);
    int seen[STEPS + 1] = {0}, n = 0;
    for (char *line = text, *nl; (nl = strchr(line, '\n')); line = nl + 1, n++) {
        *nl = 0;
        json_t *j = json_loads(line, 0, NULL);
        ck_assert_msg(j != NULL, "%s: line %d does not parse: %s", p, n + 1, line);
        const int s = (int)json_integer_value(json_object_get(j, "step"));
        ck_assert_msg(s >= 1 && s <= STEPS && !seen[s], "%s: step %d twice or out of range", p, s);
        seen[s] = 1;
        loss[s] = json_number_value(json_object_get(j, "loss"));
        json_decref(j);
    }
    ck_assert_msg(n == STEPS, "%s: %d lines, expected %d", p, n, STEPS);
    free(text);
}

START_TEST(test_train_killed_at_random) {
    char root[512], p[1200], ref[700], cmd[1200];
    tu_tempdir(root, sizeof root);
    lt_context *ctx = tu_context();
    lt_model *m = NULL;
    ck_assert_int_eq(lt_model_create_random(ctx, k_config, 3, 0.05f, &m), LT_OK);
    snprintf(p, sizeof p, "%s/model", root);
    ck_assert_int_eq(lt_model_save(m, p), LT_OK);
    lt_model_free(m);
    m = NULL;
    ck_assert_int_eq(lt_model_load(ctx, p, NULL, &m), LT_OK);
    snprintf(p, sizeof p, "%s/data.jsonl", root);
    FILE *f = fopen(p, "w");
    for (int i = 0; i < 10; i++) {
        int32_t ids[16];
        tu_fill_ids(ids, 16, 64, 40 + (uint64_t)i);
        fprintf(f, "{\"input_ids\": [");
        for (int k = 0; k < 16; k++) fprintf(f, "%s%d", k ? ", " : "", ids[k]);
        fprintf(f, "]}\n");
    }
    fclose(f);
    /* the run that is never killed, and how long it takes */
    snprintf(ref, sizeof ref, "%s/ref", root);
    double t0 = now();
    int st;
    pid_t ref_pid = start_train(root, ref, NULL);
    const int ref_exited_early = wait_first_checkpoint(ref_pid, ref, &st);
    const double T_first = now() - t0; /* start-up and the first step and save */
    if (!ref_exited_early) st = wait_status(ref_pid);
    const double T = now() - t0;
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the reference run failed (%d)", st);
    double ref_loss[STEPS + 1], loss[STEPS + 1];
    losses(ref, ref_loss);
    const int runs = getenv("LT_KILL_RUNS") ? atoi(getenv("LT_KILL_RUNS")) : 6;
    uint64_t seed = getenv("LT_KILL_SEED") ? strtoull(getenv("LT_KILL_SEED"), NULL, 10) : 1;
    lt_adapter_params ap;
    lt_adapter_params_init(&ap, sizeof ap);
    ap.rank = 4;
    ap.dropout = 0.1f;
    int killed_with_checkpoints = 0;
    for (int k = 0; k < runs; k++) {
        char out[700];
        snprintf(out, sizeof out, "%s/run%d", root, k);
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        const double u = (double)(seed >> 11) / 9007199254740992.0; /* uniform in [0, 1) */
        const int after_checkpoint = k % 2;
        /* uniform over the run's length, or over what follows the first checkpoint */
        const double at = after_checkpoint ? u * (T - T_first) : u * T;
        pid_t pid = start_train(root, out, NULL);
        const char *from = after_checkpoint ? "first checkpoint" : "start";
        int exited = after_checkpoint && wait_first_checkpoint(pid, out, &st);
        if (!exited) {
            struct timespec ts = {(time_t)at, (long)((at - (double)(time_t)at) * 1e9)};
            nanosleep(&ts, NULL);
            kill(pid, SIGKILL);
            st = wait_status(pid);
        }
        /* every checkpoint left loads; the newest is where the run resumes */
        int newest = 0;
        DIR *d = opendir(out);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            int s;
            char tail;
            if (sscanf(e->d_name, "checkpoint-%d%c", &s, &tail) != 1) continue; /* not checkpoint-final, .tmp-* */
            lt_adapter *a = NULL;
            lt_optimizer *o = NULL;
            lt_trainer *t = NULL;
            ck_assert_int_eq(lt_adapter_create(m, &ap, &a), LT_OK);
            ck_assert_int_eq(lt_optimizer_create(a, NULL, &o), LT_OK);
            ck_assert_int_eq(lt_trainer_create(m, a, o, NULL, &t), LT_OK);
            snprintf(p, sizeof p, "%s/%s", out, e->d_name);
            ck_assert_msg(lt_trainer_load_checkpoint(t, p) == LT_OK, "run %d killed %.3f s after its %s: %s", k, at,
                          from, lt_trainer_last_error(t));
            ck_assert_int_eq(lt_optimizer_step_count(o), s);
            lt_trainer_free(t);
            lt_optimizer_free(o);
            lt_adapter_free(a);
            if (s > newest) newest = s;
        }
        if (d) closedir(d);
        killed_with_checkpoints += newest > 0;
        if (newest > 0) snprintf(p, sizeof p, "%s/checkpoint-%d", out, newest);
        st = wait_status(start_train(root, out, newest > 0 ? p : NULL));
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                      "run %d (killed %.3f s after its %s): the resume from %d failed", k, at, from, newest);
        char a[900], b[900];
        snprintf(a, sizeof a, "%s/adapter/adapter_model.safetensors", ref);
        snprintf(b, sizeof b, "%s/adapter/adapter_model.safetensors", out);
        same_file(a, b, "the adapter after the resume");
        snprintf(a, sizeof a, "%s/checkpoint-final/optimizer.bin", ref);
        snprintf(b, sizeof b, "%s/checkpoint-final/optimizer.bin", out);
        same_file(a, b, "the optimizer state after the resume");
        losses(out, loss);
        for (int s = 1; s <= STEPS; s++)
            ck_assert_msg(loss[s] == ref_loss[s],
                          "run %d (killed %.3f s after its %s, resumed at %d): step %d loss %.9g vs %.9g", k, at, from,
                          newest, s, loss[s], ref_loss[s]);
        snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -e '\\.tmp-' -e '\\.old-'", out);
        char *left = tu_run(cmd, &st);
        ck_assert_msg(!left[0], "run %d (killed %.3f s after its %s): temporaries left in %s: %s", k, at, from, out,
                      left);
        free(left);
    }
    ck_assert_msg(killed_with_checkpoints >= runs / 2,
                  "%d of %d runs left a checkpoint: the kills after the first "
                  "checkpoint did not leave one",
                  killed_with_checkpoints, runs);
    lt_model_free(m);
    lt_context_free(ctx);
    tu_rm_rf(root);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("kill");
    TCase *tc = tcase_create("kill");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_train_killed_at_random);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(suite)
