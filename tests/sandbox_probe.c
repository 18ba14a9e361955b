/* Security probe run inside a container (built static by tests/sandbox_fixtures.py).
 * Prints one "key=value" line per check; tests compare core0's output with podman's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

static const char *masked[] = {"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
    "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap", 0};
static const char *readonly[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
    "/proc/sysrq-trigger", "/sys", 0};

static const char *res(long r) {
    static char buf[64];
    if (r >= 0) return "ok";
    snprintf(buf, sizeof buf, "%s", strerrorname_np(errno) ? strerrorname_np(errno) : "E?");
    return buf;
}

static int readable(const char *p) {
    struct stat st;
    if (stat(p, &st) != 0) return 0;            /* absent: nothing to read */
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(p);
        if (!d) return 0;
        struct dirent *e; int n = 0;
        while ((e = readdir(d))) if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
        closedir(d);
        return n > 0;
    }
    int fd = open(p, O_RDONLY);
    if (fd < 0) return 0;
    char c; long n = read(fd, &c, 1);
    close(fd);
    return n > 0;
}

int main(void) {
    char line[512];
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10) ||
            !strncmp(line, "Seccomp:", 8)) {
            char *tab = strchr(line, ':');
            *tab = 0;
            char *v = tab + 1;
            while (*v == ' ' || *v == '\t') v++;
            v[strcspn(v, "\n")] = 0;
            printf("%s=%s\n", line, v);
        }
    }
    for (int i = 0; masked[i]; i++)
        printf("masked:%s=%s\n", masked[i], readable(masked[i]) ? "READABLE" : "masked");
    for (int i = 0; readonly[i]; i++) {
        struct statvfs s;
        struct stat st;
        int ro;
        if (stat(readonly[i], &st) == 0 && S_ISREG(st.st_mode)) {
            int fd = open(readonly[i], O_WRONLY);  /* opening writes nothing */
            ro = fd < 0;
            if (fd >= 0) close(fd);
        } else {
            ro = statvfs(readonly[i], &s) == 0 && (s.f_flag & ST_RDONLY);
        }
        if (stat(readonly[i], &st) != 0)
            printf("ro:%s=absent\n", readonly[i]);
        else
            printf("ro:%s=%s\n", readonly[i], ro ? "ro" : "WRITABLE");
    }
    mkdir("/tmp/probe-mnt", 0700);
    printf("sys:mount=%s\n", res(mount("none", "/tmp/probe-mnt", "tmpfs", 0, 0)));
    pid_t child = fork();
    if (child == 0) { _exit(unshare(CLONE_NEWUSER) == 0 ? 0 : errno); }
    int st = 0; waitpid(child, &st, 0);
    errno = WEXITSTATUS(st);
    printf("sys:unshare-user=%s\n", res(WEXITSTATUS(st) ? -1 : 0));
    printf("sys:keyctl=%s\n", res(syscall(SYS_keyctl, 1 /* JOIN_SESSION_KEYRING */, 0)));
    printf("sys:ptrace-pid1=%s\n", res(ptrace(PTRACE_ATTACH, 1, 0, 0)));
    unsigned char attr[128] = {0};
    attr[0] = 2; /* BPF_MAP_TYPE_ARRAY */ attr[4] = 4; attr[8] = 4; attr[12] = 1;
    printf("sys:bpf=%s\n", res(syscall(SYS_bpf, 0 /* MAP_CREATE */, attr, sizeof attr)));
    f = fopen("/proc/net/dev", "r");
    printf("links=");
    int n = 0;
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (!c) continue;
        *c = 0;
        char *name = line; while (*name == ' ') name++;
        printf("%s%s", n++ ? "," : "", name);
    }
    printf("\n");
    f = fopen("/proc/1/cmdline", "r");
    if (f && fgets(line, sizeof line, f)) printf("pid1=%s\n", line);
    return 0;
}
