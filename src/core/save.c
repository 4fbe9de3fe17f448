/*
 * save.c - a directory written whole: every save of the library (adapter, checkpoint, merged or
 * quantized model) goes through lt_save_begin / lt_save_commit (declared in core.h, which says why).
 *
 * defines: lt_save_begin, lt_save_commit, lt_save_abort, lt_save_resolve
 *
 * Names of ours beside a target BASE (the last path component of DIR):
 *   BASE.tmp-<pid>-<6 chars>   a staging directory, or, after an exchange, the previous save
 *   BASE.old-<pid>-<6 chars>   the previous save moved aside (only where the exchange is refused)
 * Each holds the marker .loratune-save: "libloratune-save-1\nstaging\n" while it is written, then
 * "libloratune-save-1\ncomplete\n" and a line for every entry beside the marker.
 * Only a directory whose marker lists all it holds is ever replaced or removed, and only the entries
 * the marker lists are unlinked: a file someone else put there keeps the directory alive.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/core.h"

#define MARKER ".loratune-save"
#define MARKER_FORMAT "libloratune-save-1"

/* malloc'd copy of s; NULL when out of memory */
static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* dir = the directory holding path ("." when none), base = its last component (no trailing '/') */
static int split_path(const char *path, char **dir, char **base) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    *base = malloc(n - b + 1);
    *dir = malloc(b ? b + 1 : 2);
    if (!*base || !*dir) {
        free(*base);
        free(*dir);
        *base = *dir = NULL;
        return -1;
    }
    memcpy(*base, path + b, n - b);
    (*base)[n - b] = '\0';
    if (b) {
        memcpy(*dir, path, b);
        (*dir)[b] = '\0';
    } else {
        memcpy(*dir, ".", 2);
    }
    return 0;
}

/* ---- the marker ----------------------------------------------------------------------------------
 * Text, one item a line: "libloratune-save-1", then "staging", or "complete" and one line per entry. */

typedef struct marker {
    int kind;     /* 0: none of ours, 1: a complete save, 2: a staging directory */
    char *text;   /* the file, its newlines turned into NULs */
    char **names; /* kind 1: the entries it lists */
    size_t n;
} marker;

static void marker_free(marker *m) {
    free(m->text);
    free(m->names);
    memset(m, 0, sizeof *m);
}

/* LT_ERR_NOMEM when it could not be read for want of memory; else LT_OK with m->kind telling what it is */
static lt_status read_marker(const char *dir, marker *m) {
    memset(m, 0, sizeof *m);
    char p[4200];
    size_t len;
    lt_error ignore;
    if (lt_path_join(p, sizeof p, dir, MARKER)) return LT_OK;
    if (lt_read_file(p, &m->text, &len, &ignore) != LT_OK) return ignore.status == LT_ERR_NOMEM ? LT_ERR_NOMEM : LT_OK;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++)
        if (m->text[i] == '\n') {
            m->text[i] = '\0';
            lines++;
        }
    if (lines < 2 || strcmp(m->text, MARKER_FORMAT)) return LT_OK;
    const char *state = m->text + strlen(m->text) + 1;
    if (!strcmp(state, "staging")) {
        m->kind = 2;
        return LT_OK;
    }
    if (strcmp(state, "complete")) return LT_OK;
    if (!(m->names = malloc(lines * sizeof *m->names))) {
        marker_free(m);
        return LT_ERR_NOMEM;
    }
    char *q = (char *)state + strlen(state) + 1;
    for (size_t k = 2; k < lines; k++, q += strlen(q) + 1) m->names[m->n++] = q;
    m->kind = 1;
    return LT_OK;
}

static int listed(const marker *m, const char *name) {
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->names[i], name)) return 1;
    return 0;
}

/* names == NULL: the staging marker */
static lt_status write_marker(const char *dir, char **names, size_t n, lt_error *err) {
    size_t len = sizeof MARKER_FORMAT + 16;
    for (size_t i = 0; i < n; i++) len += strlen(names[i]) + 1;
    char *text = malloc(len), p[4200];
    if (!text) return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory writing the save marker", dir);
    size_t used = (size_t)snprintf(text, len, "%s\n%s\n", MARKER_FORMAT, names ? "complete" : "staging");
    for (size_t i = 0; i < n; i++) used += (size_t)snprintf(text + used, len - used, "%s\n", names[i]);
    lt_status st = lt_path_join(p, sizeof p, dir, MARKER) ? lt_fail(err, LT_ERR_ARGUMENT, "%s: path too long", dir)
                                                          : lt_write_file_atomic(p, text, used, err);
    free(text);
    return st;
}

/* ---- what may be replaced or removed ------------------------------------------------------------- */

/* 0 when dir is an empty directory or a complete save of ours holding only what its marker lists (kept
 * in *out when out is given; else freed); else -1 with *why naming the first thing in the way (static
 * text or the entry name in buf), or -2 when the marker could not be read for want of memory. */
static int replaceable(const char *dir, char *buf, size_t len, const char **why, marker *out) {
    marker m;
    if (read_marker(dir, &m) != LT_OK) {
        *why = "out of memory reading its save marker";
        return -2;
    }
    DIR *d = opendir(dir);
    if (!d) {
        marker_free(&m);
        *why = "it cannot be listed";
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (m.kind == 1 && (!strcmp(e->d_name, MARKER) || listed(&m, e->d_name))) continue;
        snprintf(buf, len, "it holds \"%.200s\", which %s", e->d_name,
                 m.kind == 1 ? "the previous save did not write" : "no save of this library wrote");
        *why = buf;
        rc = -1;
    }
    closedir(d);
    if (rc == 0 && out) *out = m;
    else marker_free(&m);
    return rc;
}

/* Remove a directory of ours whose marker m was read: the entries it lists (a staging directory: every
 * regular file), then the marker and the directory. Anything else stays, and with it the directory.
 * Allocates nothing (it runs after the point of no return of a save). */
static void remove_marked(const char *dir, const marker *m) {
    if (!m->kind) return;
    char p[4200];
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, MARKER)) continue;
            if (m->kind == 1 && !listed(m, e->d_name)) continue;
            if (lt_path_join(p, sizeof p, dir, e->d_name)) continue;
            struct stat sb;
            if (lstat(p, &sb) == 0 && S_ISREG(sb.st_mode)) unlink(p);
        }
        closedir(d);
    }
    if (!lt_path_join(p, sizeof p, dir, MARKER)) unlink(p);
    rmdir(dir); /* fails, harmlessly, when something not ours is left */
}

static void remove_ours(const char *dir) {
    marker m;
    if (read_marker(dir, &m) == LT_OK) remove_marked(dir, &m);
    marker_free(&m);
}

/* A staging directory killed between its mkdir and its marker holds nothing, or only the marker's
 * temporary file (.loratune-save.tmp.<pid>): remove those and the directory. Anything else, and the
 * directory stays. */
static void remove_unmarked_stage(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    char p[4200];
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (!strncmp(e->d_name, MARKER ".tmp.", sizeof MARKER + 4) && !lt_path_join(p, sizeof p, dir, e->d_name))
            unlink(p);
    closedir(d);
    rmdir(dir); /* only when nothing else is in it */
}

/* name = BASE.tmp-<pid>-<6> or BASE.old-<pid>-<6> for some BASE: returns the pid (> 0), else 0.
 * With base given, BASE must be it. */
static long temp_pid(const char *name, const char *base) {
    const size_t n = strlen(name);
    if (n < 14 || name[n - 7] != '-') return 0; /* ".tmp-" + 1 digit + "-" + 6 */
    size_t i = n - 7;
    size_t j = i;
    while (j > 0 && name[j - 1] >= '0' && name[j - 1] <= '9') j--;
    if (j == i || j < 6 || name[j - 1] != '-') return 0;
    if (memcmp(name + j - 5, ".tmp-", 5) && memcmp(name + j - 5, ".old-", 5)) return 0;
    if (base && (strlen(base) != j - 5 || memcmp(name, base, j - 5))) return 0;
    if (i - j > 9) return 0;
    return strtol(name + j, NULL, 10);
}

/* Remove the temporaries of our naming in parent left by processes that are gone (a save killed
 * before it finished, or after an exchange but before removing the previous save). A live pid
 * (another save running now, or this process) keeps its own. */
static void clean_stale(const char *parent) {
    DIR *d = opendir(parent);
    if (!d) return;
    const long self = (long)getpid();
    char p[4200];
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const long pid = temp_pid(e->d_name, NULL);
        if (pid <= 0 || pid == self) continue;
        if (kill((pid_t)pid, 0) == 0 || errno == EPERM) continue; /* alive */
        if (lt_path_join(p, sizeof p, parent, e->d_name)) continue;
        struct stat sb;
        if (lstat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) continue;
        marker m;
        if (read_marker(p, &m) != LT_OK) continue;
        if (m.kind) remove_marked(p, &m);
        else if (strstr(e->d_name, ".tmp-")) remove_unmarked_stage(p);
        marker_free(&m);
    }
    closedir(d);
}

/* mkdtemp with the permissions of a plain mkdir (0777 less the umask: a save is as readable as any
 * directory the user creates; mkdtemp would make it 0700). path ends in "XXXXXX". */
static int make_temp_dir(char *path) {
    static const char chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    char *x = path + strlen(path) - 6;
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned char r[6];
        if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) { /* no entropy yet: the clock */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t z = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull + (uint64_t)attempt;
            for (int i = 0; i < 6; i++, z >>= 8) r[i] = (unsigned char)z;
        }
        for (int i = 0; i < 6; i++) x[i] = chars[r[i] % (sizeof chars - 1)];
        if (mkdir(path, 0777) == 0) return 0;
        if (errno != EEXIST) return -1;
    }
    return -1;
}

/* ---- begin, commit, abort ------------------------------------------------------------------------- */

lt_status lt_save_begin(lt_save *s, const char *dir, lt_error *err) {
    memset(s, 0, sizeof *s);
    if (!dir || !dir[0]) return lt_fail(err, LT_ERR_ARGUMENT, "save: the directory is empty or NULL");
    if (strlen(dir) > 4000) return lt_fail(err, LT_ERR_ARGUMENT, "save: the path is too long");
    char why_buf[512];
    const char *why = NULL;
    struct stat sb;
    if (lstat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) why = S_ISLNK(sb.st_mode) ? "it is a symbolic link" : "it is not a directory";
        else if (replaceable(dir, why_buf, sizeof why_buf, &why, NULL) == -2)
            return lt_fail(err, LT_ERR_NOMEM, "%s: %s", dir, why);
        if (why)
            return lt_fail(err, LT_ERR_IO,
                           "%s: exists and %s; a save replaces only an empty directory or an earlier save of "
                           "this library: nothing was changed (save into a new or empty directory)",
                           dir, why);
    } else if (errno != ENOENT) {
        return lt_fail(err, LT_ERR_IO, "%s: cannot stat: %s", dir, strerror(errno));
    }
    s->dir = dup_str(dir);
    if (!s->dir || split_path(dir, &s->parent, &s->base)) {
        lt_save_abort(s);
        return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
    }
    if (!s->base[0] || !strcmp(s->base, ".") || !strcmp(s->base, "..")) {
        lt_save_abort(s);
        return lt_fail(err, LT_ERR_ARGUMENT, "%s: a save needs a directory name of its own", dir);
    }
    lt_status st = lt_mkdir_p(s->parent, err);
    if (st != LT_OK) {
        lt_save_abort(s);
        return st;
    }
    const size_t len = strlen(s->parent) + strlen(s->base) + 48;
    if (!(s->stage = malloc(len))) {
        lt_save_abort(s);
        return lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", dir);
    }
    snprintf(s->stage, len, "%s/%s.tmp-%ld-XXXXXX", s->parent, s->base, (long)getpid());
    if (make_temp_dir(s->stage) != 0) {
        int e = errno;
        free(s->stage);
        s->stage = NULL;
        lt_save_abort(s);
        return lt_fail(err, LT_ERR_IO, "%s: cannot create a staging directory beside it: %s", dir, strerror(e));
    }
    if ((st = write_marker(s->stage, NULL, 0, err)) != LT_OK) {
        rmdir(s->stage); /* made just now and still empty: without its marker, abort would not know it */
        free(s->stage);
        s->stage = NULL;
        lt_save_abort(s);
        return st;
    }
    return LT_OK;
}

void lt_save_abort(lt_save *s) {
    if (s->stage) remove_ours(s->stage);
    free(s->stage);
    free(s->dir);
    free(s->parent);
    free(s->base);
    memset(s, 0, sizeof *s);
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The staging directory's entries (the marker aside), which must all be regular files with names
 * that fit on a line of the marker. */
static lt_status list_stage(const lt_save *s, char ***out, size_t *n_out, lt_error *err) {
    DIR *d = opendir(s->stage);
    if (!d) return lt_fail(err, LT_ERR_IO, "%s: cannot list the staging directory: %s", s->dir, strerror(errno));
    lt_status st = LT_OK;
    char **names = NULL, p[4200];
    size_t n = 0, cap = 0;
    struct dirent *e;
    while (st == LT_OK && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, MARKER)) continue;
        struct stat sb;
        if (strchr(e->d_name, '\n') || lt_path_join(p, sizeof p, s->stage, e->d_name) || lstat(p, &sb) != 0 ||
            !S_ISREG(sb.st_mode)) {
            st = lt_fail(err, LT_ERR_INTERNAL, "%s: staging entry \"%.200s\" is not a plain regular file", s->dir,
                         e->d_name);
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", s->dir);
                break;
            }
            names = nn;
        }
        if (!(names[n] = dup_str(e->d_name))) st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", s->dir);
        else n++;
    }
    closedir(d);
    if (st != LT_OK) {
        for (size_t i = 0; i < n; i++) free(names[i]);
        free(names);
        return st;
    }
    if (n > 1) qsort(names, n, sizeof *names, cmp_name); /* the same files give the same marker */
    *out = names;
    *n_out = n;
    return LT_OK;
}

lt_status lt_save_commit(lt_save *s, lt_error *err) {
    char **names = NULL;
    size_t n = 0;
    lt_status st = list_stage(s, &names, &n, err);
    if (st == LT_OK) {
        st = write_marker(s->stage, names, n, err);
        for (size_t i = 0; i < n; i++) free(names[i]);
        free(names);
    }
    if (st != LT_OK) {
        lt_save_abort(s);
        return st;
    }
    lt_fsync_dir(s->stage); /* every file was fsynced as it was written; now their names */
    /* DIR may have appeared or changed since begin: check again right before publishing. Whatever
     * removing the previous save needs (its marker, the fallback's name) is read or allocated now:
     * after the exchange nothing may fail for want of memory. */
    char why_buf[512];
    const char *why = NULL;
    struct stat sb;
    marker prev = {0};
    const int exists = lstat(s->dir, &sb) == 0;
    const size_t len = strlen(s->parent) + strlen(s->base) + 48;
    char *old = exists ? malloc(len) : NULL;
    if (exists && !old) st = lt_fail(err, LT_ERR_NOMEM, "%s: out of memory", s->dir);
    else if (exists && !S_ISDIR(sb.st_mode))
        st = lt_fail(err, LT_ERR_IO, "%s: changed during the save and is no longer a directory; nothing was changed",
                     s->dir);
    else if (exists && replaceable(s->dir, why_buf, sizeof why_buf, &why, &prev) != 0)
        st = why == why_buf
                 ? lt_fail(err, LT_ERR_IO, "%s: changed during the save and %s; nothing was changed", s->dir, why)
                 : lt_fail(err, strstr(why, "memory") ? LT_ERR_NOMEM : LT_ERR_IO, "%s: %s", s->dir, why);
    else if (!exists && rename(s->stage, s->dir) != 0)
        st = lt_fail(err, LT_ERR_IO, "%s: cannot rename the staging directory into place: %s", s->dir, strerror(errno));
    else if (exists && renameat2(AT_FDCWD, s->stage, AT_FDCWD, s->dir, RENAME_EXCHANGE) != 0) {
        const int e = errno;
        if (e != EINVAL && e != ENOSYS && e != ENOTSUP) {
            st = lt_fail(err, LT_ERR_IO, "%s: cannot swap in the new save: %s", s->dir, strerror(e));
        } else {
            /* the file system cannot exchange two names: move the previous save aside, then rename. A
             * crash between the two leaves no DIR; lt_save_resolve then finds the newest complete save
             * among the temporaries. */
            snprintf(old, len, "%s/%s.old-%ld-XXXXXX", s->parent, s->base, (long)getpid());
            if (make_temp_dir(old) != 0 || rename(s->dir, old) != 0) {
                st = lt_fail(err, LT_ERR_IO, "%s: cannot move the previous save aside: %s", s->dir, strerror(errno));
                rmdir(old);
            } else if (rename(s->stage, s->dir) != 0) {
                st = lt_fail(err, LT_ERR_IO, "%s: cannot rename the new save into place: %s", s->dir, strerror(errno));
                rename(old, s->dir); /* put the previous one back */
            } else {
                char *t = s->stage; /* the previous save is now at `old`; the staging name is gone */
                s->stage = old;
                old = t;
            }
        }
    }
    free(old);
    if (st != LT_OK) {
        marker_free(&prev);
        lt_save_abort(s);
        return st;
    }
    lt_fsync_dir(s->parent);
    if (exists) remove_marked(s->stage, &prev); /* the previous save, now at the temporary name */
    marker_free(&prev);
    free(s->stage);
    s->stage = NULL;
    clean_stale(s->parent); /* only after a success: a failed save touches nothing beside it */
    lt_save_abort(s);       /* frees the names */
    return LT_OK;
}

/* ---- readers ---------------------------------------------------------------------------------------- */

lt_status lt_save_resolve(const struct lt_context *ctx, const char *dir, char *out, size_t len) {
    struct stat sb;
    if (stat(dir, &sb) == 0 || errno != ENOENT) {
        snprintf(out, len, "%s", dir);
        return LT_OK;
    }
    char *parent = NULL, *base = NULL;
    if (split_path(dir, &parent, &base)) return LT_ERR_NOMEM;
    DIR *d = opendir(parent);
    struct timespec best = {0, 0};
    int found = 0;
    char p[4200], m[4300];
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (temp_pid(e->d_name, base) <= 0 || lt_path_join(p, sizeof p, parent, e->d_name)) continue;
            marker mk;
            const int kind = read_marker(p, &mk) == LT_OK ? mk.kind : 0;
            marker_free(&mk);
            snprintf(m, sizeof m, "%s/" MARKER, p);
            if (kind != 1 || stat(m, &sb) != 0) continue;
            /* the newest complete save: its marker was written last */
            if (!found || sb.st_mtim.tv_sec > best.tv_sec ||
                (sb.st_mtim.tv_sec == best.tv_sec && sb.st_mtim.tv_nsec > best.tv_nsec)) {
                best = sb.st_mtim;
                snprintf(out, len, "%s", p);
                found = 1;
            }
        }
        closedir(d);
    }
    free(parent);
    free(base);
    if (!found) snprintf(out, len, "%s", dir);
    else
        lt_log(ctx, LT_LOG_WARN, "%s is absent (a save was interrupted); using %s, the newest complete save", dir, out);
    return LT_OK;
}
