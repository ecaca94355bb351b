/* skyjobs-launch: what `prlimit ... -- setpriv ... -- cmd` does, in one exec instead of two.
 *
 *   skyjobs-launch CPU_S AS_BYTES FSIZE_BYTES NPROC UID GID PARENT_PID -- program [args...]
 *
 * Sets each resource limit that is > 0 (soft and hard, never above the current hard limit),
 * drops to UID/GID with no supplementary groups when UID >= 0, asks for SIGKILL when the parent
 * (the executor) dies, exits if the parent is already gone, then execs the program. The executor
 * compiles it on first start (services/jobs/launch.py) and falls back to util-linux's prlimit and
 * setpriv when no C compiler is there: measured here, one exec less is ~1.4 ms of CPU per job.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

static void fail(const char *what) {
    fprintf(stderr, "skyjobs-launch: %s: %s\n", what, strerror(errno));
    _exit(126);
}

static void limit(int resource, long long value, const char *what) {
    struct rlimit current;
    if (value <= 0) return;
    if (getrlimit(resource, &current) != 0) fail(what);
    rlim_t wanted = (rlim_t)value;
    if (current.rlim_max != RLIM_INFINITY && current.rlim_max < wanted) wanted = current.rlim_max;
    struct rlimit next = {wanted, wanted};
    if (setrlimit(resource, &next) != 0) fail(what);
}

int main(int argc, char **argv) {
    if (argc < 10 || strcmp(argv[8], "--") != 0) {
        fprintf(stderr, "usage: skyjobs-launch CPU AS FSIZE NPROC UID GID PARENT_PID -- program [args...]\n");
        return 126;
    }
    limit(RLIMIT_CPU, atoll(argv[1]), "cpu limit");
    limit(RLIMIT_AS, atoll(argv[2]), "memory limit");
    limit(RLIMIT_FSIZE, atoll(argv[3]), "file size limit");
    limit(RLIMIT_NPROC, atoll(argv[4]), "process limit");
    long uid = atol(argv[5]), gid = atol(argv[6]);
    if (uid >= 0) {
        if (setgroups(0, NULL) != 0) fail("setgroups");
        if (setgid((gid_t)gid) != 0) fail("setgid");
        if (setuid((uid_t)uid) != 0) fail("setuid");
    }
    /* After the change of user, which clears it. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail("parent-death signal");
    if (getppid() != (pid_t)atol(argv[7])) _exit(137); /* the executor died before the line above */
    execv(argv[9], argv + 9);
    fail(argv[9]);
    return 126;
}
