/*
 * loadgen.c -- load generator (and reference Linux server) for `tas bench`.
 *
 * Compiled at run time by kernel_slowpath/bench.py (gcc -O2, cached by the
 * source's hash).  One process, one thread, epoll (conns/idle and serve can
 * fork workers, see below); every mode is bounded by a count and by --time
 * (seconds), and prints one JSON object on stdout.
 *
 *   loadgen rr      --host H --port P --conns N --size 64 --time S [--max N]
 *        closed loop: each connection has one request outstanding; latency
 *        of every request (after --warmup requests per connection) is kept
 *        (up to 8M samples) -> requests/s, p50/p99/p99.9, a CDF.
 *   loadgen bulk    --host H --port P --bytes N --time S
 *        send N bytes to a discard server, shut down, wait for its close.
 *   loadgen bulk-rx --host H --port P --bytes N --time S
 *        read N bytes from a chargen server, then close.
 *   loadgen crr     --host H --port P --count N --time S
 *        connect, one 64 B echo, close; repeated (one at a time).
 *   loadgen conns   --host H --port P --count N --time S [--src a,b,..]
 *                   [--window W] [--per-worker K]
 *        N connections at once (at most W, default 256, connecting at a
 *        time), each echoes 64 B once; all are held open until every one
 *        finished.  Split over ceil(N/K) worker processes (K default 16,000,
 *        below the hard fd limit), each with its share of W; the parent
 *        reports the sum, "seconds" = until the last worker finished.
 *   loadgen idle    --host H --port P --conns N --time S
 *        open N connections, one echo each, then hold them idle for S s.
 *   loadgen serve   --host H [--port P] [--workers N]
 *        reference server on plain Linux sockets: echo on P (default 7),
 *        discard on P+2, chargen on P+12 (i.e. 7/9/19); runs until SIGTERM.
 *        --workers N: N epoll processes sharing the ports (SO_REUSEPORT),
 *        for more connections than one process's fd limit allows.
 *
 * Common: --cpu C pins the process (sched_setaffinity).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES (8u << 20)
#define IOBUF (1u << 20)

static struct {
    const char *mode;
    const char *host;
    int port;
    int conns;
    int size;
    double time_s;
    long long max;
    long long bytes;
    long long count;
    int warmup;
    int cpu;
    int window;
    long long per_worker;
    int workers;
    char *src;
} O = {.host = "198.18.0.2", .port = 7, .conns = 1, .size = 64, .time_s = 5, .max = 0,
       .bytes = 1 << 20, .count = 100, .warmup = 20, .cpu = -1, .window = 256,
       .per_worker = 16000, .workers = 1};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    printf("{\"ok\": false, \"error\": \"%s: %s\"}\n", what, strerror(errno));
    fflush(stdout);
    exit(1);
}

static void fail(const char *msg)
{
    printf("{\"ok\": false, \"error\": \"%s\"}\n", msg);
    fflush(stdout);
    exit(1);
}

static uint64_t deadline_ns;
static int past_deadline(void) { return now_ns() > deadline_ns; }

static struct sockaddr_in dst_addr(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)O.port)};
    if (inet_pton(AF_INET, O.host, &a.sin_addr) != 1)
        fail("bad --host");
    return a;
}

static int tcp_socket(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        die("socket");
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return s;
}

static void set_timeouts(int s, double sec)
{
    struct timeval tv = {.tv_sec = (time_t)sec, .tv_usec = (suseconds_t)((sec - (time_t)sec) * 1e6)};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int connect_blocking(void)
{
    struct sockaddr_in a = dst_addr();
    int s = tcp_socket();
    set_timeouts(s, 5.0);
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

static int read_full(int s, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(s, buf + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int s, const char *buf, size_t n)
{
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(s, buf + put, n - put);
        if (r <= 0)
            return -1;
        put += (size_t)r;
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const uint32_t *v, uint64_t n, double q)
{
    if (!n)
        return 0;
    uint64_t i = (uint64_t)(q * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i] / 1000.0;
}

/* ---------------------------------------------------------------- rr */

struct rrconn {
    int fd;
    uint64_t t0;
    uint32_t got;
    uint32_t done;
};

static void mode_rr(void)
{
    int n = O.conns;
    uint32_t *lat = malloc(MAX_SAMPLES * sizeof(uint32_t));
    struct rrconn *c = calloc((size_t)n, sizeof(*c));
    char *msg = malloc((size_t)O.size), *buf = malloc(IOBUF);
    if (!lat || !c || !msg || !buf)
        fail("out of memory");
    for (int i = 0; i < O.size; i++)
        msg[i] = (char)i;
    for (int i = 0; i < n; i++) {
        c[i].fd = connect_blocking();
        if (c[i].fd < 0)
            die("connect");
        for (int w = 0; w < O.warmup; w++) {
            if (write_full(c[i].fd, msg, (size_t)O.size) || read_full(c[i].fd, buf, (size_t)O.size))
                fail("warm-up echo failed");
        }
    }
    uint64_t ns = 0, start = now_ns(), stop = start + (uint64_t)(O.time_s * 1e9);
    long long maxreq = O.max > 0 ? O.max : (long long)MAX_SAMPLES * 4;
    long long total = 0;
    if (n == 1) {
        /* one connection: plain blocking calls, no epoll in the loop */
        int fd = c[0].fd;
        while (total < maxreq) {
            uint64_t t0 = now_ns();
            if (write_full(fd, msg, (size_t)O.size) || read_full(fd, buf, (size_t)O.size))
                fail("echo failed (timeout or EOF)");
            uint64_t t1 = now_ns();
            if (ns < MAX_SAMPLES)
                lat[ns++] = (uint32_t)((t1 - t0) > 0xffffffffu ? 0xffffffffu : (t1 - t0));
            total++;
            if (t1 >= stop)
                break;
        }
    } else {
        int ep = epoll_create1(EPOLL_CLOEXEC);
        for (int i = 0; i < n; i++) {
            fcntl(c[i].fd, F_SETFL, O_NONBLOCK);
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
            epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev);
            c[i].t0 = now_ns();
            if (write(c[i].fd, msg, (size_t)O.size) != O.size)
                fail("short send");
        }
        struct epoll_event evs[256];
        uint64_t last_progress = now_ns();
        int running = 1;
        while (running) {
            int k = epoll_wait(ep, evs, 256, 100);
            uint64_t t = now_ns();
            if (k <= 0) {
                if (t - last_progress > 5000000000ull)
                    fail("no progress for 5 s");
                if (t >= stop)
                    break;
                continue;
            }
            for (int j = 0; j < k; j++) {
                struct rrconn *cc = &c[evs[j].data.u32];
                ssize_t r = read(cc->fd, buf, IOBUF);
                if (r == 0)
                    fail("unexpected EOF");
                if (r < 0) {
                    if (errno == EAGAIN)
                        continue;
                    die("read");
                }
                cc->got += (uint32_t)r;
                while (cc->got >= (uint32_t)O.size) {
                    cc->got -= (uint32_t)O.size;
                    uint64_t d = t - cc->t0;
                    if (ns < MAX_SAMPLES)
                        lat[ns++] = (uint32_t)(d > 0xffffffffu ? 0xffffffffu : d);
                    total++;
                    last_progress = t;
                    if (t < stop && total < maxreq) {
                        cc->t0 = t;
                        if (write(cc->fd, msg, (size_t)O.size) != O.size)
                            fail("short send");
                    } else {
                        running = 0;
                    }
                }
            }
        }
        close(ep);
    }
    uint64_t el = now_ns() - start;
    qsort(lat, ns, sizeof(uint32_t), cmp_u32);
    printf("{\"ok\": true, \"mode\": \"rr\", \"conns\": %d, \"size\": %d, \"requests\": %lld, "
           "\"seconds\": %.6f, \"rps\": %.1f, \"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, "
           "\"max_us\": %.2f, \"cdf\": [",
           n, O.size, total, el / 1e9, total / (el / 1e9), pct(lat, ns, 0.5), pct(lat, ns, 0.99),
           pct(lat, ns, 0.999), ns ? lat[ns - 1] / 1000.0 : 0.0);
    /* the CDF at 200 quantiles (plus the extreme tail) for the plot */
    const int Q = 200;
    for (int i = 0; i <= Q; i++) {
        double q = i == Q ? 0.9999 : (double)i / Q;
        printf("%s[%.5f, %.2f]", i ? ", " : "", q, pct(lat, ns, q));
    }
    printf("]}\n");
    for (int i = 0; i < n; i++)
        close(c[i].fd);
}

/* ---------------------------------------------------------------- bulk */

static void mode_bulk(int rx)
{
    char *buf = malloc(IOBUF);
    if (!buf)
        fail("out of memory");
    memset(buf, 'x', IOBUF);
    int s = connect_blocking();
    if (s < 0)
        die("connect");
    set_timeouts(s, 10.0);
    long long left = O.bytes, moved = 0;
    uint64_t t0 = now_ns();
    if (!rx) {
        while (left > 0) {
            ssize_t r = write(s, buf, left < IOBUF ? (size_t)left : IOBUF);
            if (r <= 0)
                die("write");
            left -= r;
            moved += r;
            if (past_deadline())
                fail("time limit");
        }
        shutdown(s, SHUT_WR);
        /* the discard server closes once it has read everything */
        for (;;) {
            ssize_t r = read(s, buf, IOBUF);
            if (r == 0)
                break;
            if (r < 0)
                die("read (waiting for the server's close)");
            if (past_deadline())
                fail("time limit");
        }
    } else {
        while (left > 0) {
            ssize_t r = read(s, buf, left < IOBUF ? (size_t)left : IOBUF);
            if (r <= 0)
                die("read");
            left -= r;
            moved += r;
            if (past_deadline())
                fail("time limit");
        }
    }
    uint64_t el = now_ns() - t0;
    close(s);
    printf("{\"ok\": true, \"mode\": \"%s\", \"bytes\": %lld, \"seconds\": %.6f, \"gbps\": %.4f}\n",
           rx ? "bulk-rx" : "bulk", moved, el / 1e9, moved * 8.0 / (double)el);
}

/* ---------------------------------------------------------------- crr */

static void mode_crr(void)
{
    char msg[64], buf[64];
    for (int i = 0; i < 64; i++)
        msg[i] = (char)i;
    long long done = 0, errors = 0;
    uint64_t t0 = now_ns();
    while (done < O.count && !past_deadline()) {
        int s = connect_blocking();
        if (s < 0) {
            if (++errors > 10)
                die("connect");
            continue;
        }
        if (write_full(s, msg, 64) || read_full(s, buf, 64)) {
            close(s);
            if (++errors > 10)
                fail("echo failed");
            continue;
        }
        close(s);
        done++;
    }
    uint64_t el = now_ns() - t0;
    printf("{\"ok\": true, \"mode\": \"crr\", \"connections\": %lld, \"errors\": %lld, "
           "\"seconds\": %.6f, \"cps\": %.1f}\n", done, errors, el / 1e9, done / (el / 1e9));
}

/* ---------------------------------------------------------------- conns / idle */

/*
 * conns/idle: the connections are split over worker processes (fork), each
 * holding at most --per-worker sockets (default 16,000; capped below the
 * hard RLIMIT_NOFILE, which a container without CAP_SYS_RESOURCE cannot
 * raise).  Every worker runs the connect/echo-once loop over its share
 * (with its share of --window), reports to the parent over a pipe and keeps
 * its connections open until the parent closes the "release" pipe, i.e.
 * until every worker has finished (idle: and the idle time has passed), so
 * all N are open at the same time.  Workers die with the parent
 * (PR_SET_PDEATHSIG) and are bounded by the same deadline.  One worker's
 * worth of connections runs in the process itself (no fork).
 */

enum { C_CONNECTING, C_SENT, C_DONE, C_FAILED };

static void raise_nofile(long long n)
{
    struct rlimit rl = {.rlim_cur = (rlim_t)n + 64, .rlim_max = (rlim_t)n + 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

struct cshare {
    long long lo, n;   /* global index of the first connection, how many */
    long long window;  /* at most this many connecting at a time */
    int *fd;           /* n entries, -1 = none */
    long long next, ok, failed;
    uint64_t end_ns;   /* when the loop ended (all done, deadline or no progress) */
};

/* the last time any worker finished a connection (shared memory, so that
 * "no progress for 5 s" means no progress in any worker, as with one
 * process); NULL: one process */
static uint64_t *shared_progress;

static void note_progress(uint64_t t)
{
    if (shared_progress)
        __atomic_store_n(shared_progress, t, __ATOMIC_RELAXED);
}

static uint64_t last_progress(uint64_t mine)
{
    if (!shared_progress)
        return mine;
    uint64_t all = __atomic_load_n(shared_progress, __ATOMIC_RELAXED);
    return all > mine ? all : mine;
}

/* source addresses: 64k ports per (src, dst, port), so spread */
static struct in_addr srcs[16];
static int nsrc;

static void parse_src(void)
{
    if (!O.src)
        return;
    for (char *p = strtok(O.src, ","); p && nsrc < 16; p = strtok(NULL, ","))
        if (inet_pton(AF_INET, p, &srcs[nsrc]) == 1)
            nsrc++;
}

/* open w->n connections, one 64 B echo each; bounded by the deadline and by
 * 5 s without progress */
static void conns_open(struct cshare *w)
{
    long long n = w->n;
    int *fd = w->fd;
    uint8_t *st = calloc((size_t)n + 1, 1);
    uint8_t *got = calloc((size_t)n + 1, 1);
    if (!st || !got)
        fail("out of memory");
    struct sockaddr_in a = dst_addr();
    char msg[64], buf[256];
    for (int i = 0; i < 64; i++)
        msg[i] = (char)i;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    long long next = 0, inflight = 0, ok = 0, failed = 0;
    long long window = w->window > 0 ? w->window : 1;
    uint64_t last = now_ns(), noted = 0;
    struct epoll_event evs[512];
    while ((ok + failed < n) && !past_deadline()) {
        while (next < n && inflight < window) {
            int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (s < 0) {
                st[next] = C_FAILED;
                fd[next++] = -1;
                failed++;
                continue;
            }
            int one = 1;
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            if (nsrc) {
                setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
                struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = srcs[(w->lo + next) % nsrc]};
                bind(s, (struct sockaddr *)&sa, sizeof(sa));
            }
            int r = connect(s, (struct sockaddr *)&a, sizeof(a));
            if (r != 0 && errno != EINPROGRESS) {
                close(s);
                st[next] = C_FAILED;
                fd[next++] = -1;
                failed++;
                continue;
            }
            fd[next] = s;
            st[next] = C_CONNECTING;
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)next};
            epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
            next++;
            inflight++;
        }
        int k = epoll_wait(ep, evs, 512, 100);
        uint64_t t = now_ns();
        if (k <= 0 && t - last_progress(last) > 5000000000ull)
            break;  /* no progress (in any worker) for 5 s: report what we have */
        for (int j = 0; j < k; j++) {
            long long i = (long long)evs[j].data.u64;
            int s = fd[i];
            if (st[i] == C_CONNECTING && (evs[j].events & EPOLLOUT)) {
                int err = 0;
                socklen_t el = sizeof(err);
                getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || write(s, msg, 64) != 64) {
                    st[i] = C_FAILED;
                    failed++;
                    inflight--;
                    epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL);
                    continue;
                }
                st[i] = C_SENT;
                struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, s, &ev);
                continue;
            }
            if (st[i] == C_SENT && (evs[j].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
                ssize_t r = read(s, buf, sizeof(buf));
                if (r < 0 && errno == EAGAIN)
                    continue;
                if (r <= 0) {
                    st[i] = C_FAILED;
                    failed++;
                } else if ((got[i] += (uint8_t)r) >= 64) {
                    st[i] = C_DONE;
                    ok++;
                    last = t;
                    if (t - noted > 1000000ull) {  /* (at most every ms: one shared cache line) */
                        note_progress(t);
                        noted = t;
                    }
                } else {
                    continue;
                }
                inflight--;
                epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL);
            } else if (st[i] == C_CONNECTING && (evs[j].events & (EPOLLERR | EPOLLHUP))) {
                st[i] = C_FAILED;
                failed++;
                inflight--;
                epoll_ctl(ep, EPOLL_CTL_DEL, s, NULL);
            }
        }
    }
    w->end_ns = now_ns();
    w->next = next;
    w->ok = ok;
    w->failed = failed;
    close(ep);
    free(st);
    free(got);
}

static void conns_close(struct cshare *w)
{
    for (long long i = 0; i < w->next; i++)
        if (w->fd[i] >= 0)
            close(w->fd[i]);
}

/* what a worker reports to the parent (one write, < PIPE_BUF: atomic) */
struct cmsg {
    int32_t worker;
    int32_t pad;
    long long ok, failed;
    uint64_t end_ns;
};

static void hold_idle(void)
{
    uint64_t until = now_ns() + (uint64_t)(O.time_s * 1e9);
    while (now_ns() < until) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void conns_report(int idle, long long n, long long ok, long long failed, uint64_t el, int workers)
{
    if (idle)
        printf("{\"ok\": true, \"mode\": \"idle\", \"connections\": %lld, \"failed\": %lld, \"phase\": \"open\", "
               "\"workers\": %d}\n", ok, failed, workers);
    else
        printf("{\"ok\": true, \"mode\": \"conns\", \"requested\": %lld, \"served\": %lld, \"failed\": %lld, "
               "\"seconds\": %.6f, \"cps\": %.1f, \"workers\": %d}\n",
               n, ok, failed, el / 1e9, el ? ok / (el / 1e9) : 0.0, workers);
    fflush(stdout);
}

/* a worker: open its share, report, hold until released (bounded) */
static void conns_worker(int k, struct cshare *w, int res_fd, int rel_fd, int idle)
{
    raise_nofile(w->n + 16);
    conns_open(w);
    struct cmsg m = {.worker = k, .ok = w->ok, .failed = w->failed, .end_ns = w->end_ns};
    if (write(res_fd, &m, sizeof(m)) != (ssize_t)sizeof(m))
        _exit(3);
    /* hold until the parent closes the release pipe; bounded in case it
     * cannot (it is gone: PR_SET_PDEATHSIG kills us anyway) */
    uint64_t until = deadline_ns + (uint64_t)(((idle ? O.time_s : 0.0) + 30.0) * 1e9);
    for (;;) {
        uint64_t t = now_ns();
        if (t >= until)
            break;
        struct pollfd p = {.fd = rel_fd, .events = POLLIN};
        int ms = (int)((until - t) / 1000000ull) + 1;
        int r = poll(&p, 1, ms > 1000 ? 1000 : ms);
        if (r > 0) {
            char c;
            ssize_t g = read(rel_fd, &c, 1);
            if (g == 0 || (g < 0 && errno != EINTR && errno != EAGAIN))
                break;  /* EOF: released */
        }
    }
    conns_close(w);
    _exit(0);
}

static void mode_conns(int idle)
{
    long long n = idle ? O.conns : O.count;
    parse_src();
    long long window = O.window > 0 ? O.window : 256;
    /* sockets per process: under the hard fd limit (64 for epoll, pipes, stdio) */
    long long per = O.per_worker > 0 ? O.per_worker : 16000;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && (long long)rl.rlim_max - 64 < per)
        per = (long long)rl.rlim_max - 64;
    if (per < 1)
        per = 1;
    long long nw = n > 0 ? (n + per - 1) / per : 1;
    if (nw > 64)
        fail("too many connections for the per-process fd limit (more than 64 workers)");
    int workers = (int)nw;
    uint64_t t0 = now_ns();
    if (workers <= 1) {
        struct cshare w = {.lo = 0, .n = n, .window = window};
        raise_nofile(n);
        w.fd = malloc(((size_t)n + 1) * sizeof(int));
        if (!w.fd)
            fail("out of memory");
        conns_open(&w);
        conns_report(idle, n, w.ok, w.failed, w.end_ns - t0, 1);
        if (idle)
            hold_idle();
        conns_close(&w);
        free(w.fd);
        return;
    }
    int res[2], rel[2];
    if (pipe2(res, O_CLOEXEC) || pipe2(rel, O_CLOEXEC))
        die("pipe2");
    void *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shm == MAP_FAILED)
        die("mmap");
    shared_progress = shm;
    *shared_progress = t0;
    pid_t parent = getpid(), pid[64];
    long long share[64];
    fflush(stdout);
    for (int k = 0; k < workers; k++) {
        long long lo = n * k / workers, hi = n * (k + 1) / workers;
        long long win = window * (k + 1) / workers - window * k / workers;
        share[k] = hi - lo;
        pid[k] = fork();
        if (pid[k] < 0) {
            for (int j = 0; j < k; j++)
                kill(pid[j], SIGKILL);
            die("fork");
        }
        if (pid[k] == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent)
                _exit(1);
            close(res[0]);
            close(rel[1]);
            struct cshare w = {.lo = lo, .n = hi - lo, .window = win > 0 ? win : 1};
            w.fd = malloc(((size_t)w.n + 1) * sizeof(int));
            if (!w.fd)
                _exit(2);
            conns_worker(k, &w, res[1], rel[0], idle);
        }
    }
    close(res[1]);
    close(rel[0]);
    /* collect one report per worker; bounded: the workers' own deadline plus
     * 5 s of no progress plus slack.  A worker that exits before it is
     * released has crashed: its share counts as failed. */
    long long ok = 0, failed = 0;
    uint64_t end = t0;
    int have = 0, gone = 0, seen[64] = {0}, dead[64] = {0};
    uint64_t until = deadline_ns + 15000000000ull;
    while (have + gone < workers && now_ns() < until) {
        struct pollfd p = {.fd = res[0], .events = POLLIN};
        int r = poll(&p, 1, 200);
        ssize_t g = 0;
        struct cmsg m;
        if (r > 0)
            g = read(res[0], &m, sizeof(m));
        if (g > 0) {
            if (g == (ssize_t)sizeof(m) && m.worker >= 0 && m.worker < workers && !seen[m.worker]) {
                seen[m.worker] = 1;
                have++;
                if (dead[m.worker])
                    gone--;  /* it reported, then died */
                ok += m.ok;
                failed += m.failed;
                if (m.end_ns > end)
                    end = m.end_ns;
            }
            continue;  /* drain reports before looking for dead workers */
        }
        if (r > 0 && g == 0) {  /* EOF: every worker has exited */
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        pid_t w;
        while ((w = waitpid(-1, NULL, WNOHANG)) > 0)
            for (int k = 0; k < workers; k++)
                if (pid[k] == w && !dead[k]) {
                    dead[k] = 1;
                    if (!seen[k])
                        gone++;
                }
    }
    for (;;) {  /* reports written just before their writer died */
        struct pollfd p = {.fd = res[0], .events = POLLIN};
        struct cmsg m;
        if (poll(&p, 1, 0) <= 0 || read(res[0], &m, sizeof(m)) != (ssize_t)sizeof(m))
            break;
        if (m.worker >= 0 && m.worker < workers && !seen[m.worker]) {
            seen[m.worker] = 1;
            have++;
            ok += m.ok;
            failed += m.failed;
            if (m.end_ns > end)
                end = m.end_ns;
        }
    }
    /* a worker that never reported (crashed or hung): its share failed */
    for (int k = 0; k < workers; k++)
        if (!seen[k])
            failed += share[k];
    if (have < workers)
        end = now_ns();
    if (idle) {
        conns_report(1, n, ok, failed, end - t0, workers);
        hold_idle();
    }
    /* release: every worker closes its connections and exits */
    close(rel[1]);
    uint64_t wait_until = now_ns() + 10000000000ull;
    int left = 0;
    for (int k = 0; k < workers; k++)
        left += !dead[k];
    while (left > 0) {
        pid_t r = waitpid(-1, NULL, WNOHANG);
        if (r > 0) {
            left--;
            continue;
        }
        if (r < 0 || now_ns() > wait_until)
            break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (left > 0) {
        for (int k = 0; k < workers; k++)
            kill(pid[k], SIGKILL);
        while (waitpid(-1, NULL, 0) > 0)
            ;
    }
    close(res[0]);
    if (!idle)
        conns_report(0, n, ok, failed, end - t0, workers);
}

/* ---------------------------------------------------------------- serve */

enum { S_ECHO, S_DISCARD, S_CHARGEN, S_LISTEN };

struct sconn {
    int fd;
    int kind;
    uint32_t pend_off, pend_len;
    char *pend;
};

static volatile sig_atomic_t stop_flag;
static void on_term(int sig) { (void)sig; stop_flag = 1; }

/*
 * One serving process: its own epoll and listeners.  With --workers N > 1,
 * N processes (this one and N-1 forked children) each bind the three ports
 * with SO_REUSEPORT, so the kernel spreads the connections over them and
 * each stays under the per-process fd limit; with N = 1 (the default) it is
 * exactly the single epoll process it always was.
 */
static struct sconn *listeners[3];
static int paused;  /* listeners taken out of epoll after EMFILE */

static int serve_bind(int ep, int reuseport)
{
    int ports[3] = {O.port, O.port + 2, O.port + 12};
    for (int k = 0; k < 3; k++) {
        int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (ls < 0)
            return -1;
        int one = 1;
        setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (reuseport && setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
            return -1;
        struct sockaddr_in a = dst_addr();
        a.sin_port = htons((uint16_t)ports[k]);
        if (bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 4096) != 0)
            return -1;
        struct sconn *c = calloc(1, sizeof(*c));
        if (!c)
            return -1;
        c->fd = ls;
        c->kind = S_LISTEN + k;
        listeners[k] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    }
    return 0;
}

static void serve_loop(int ep)
{
    static char buf[IOBUF], gen[IOBUF];
    memset(gen, 'c', sizeof(gen));
    struct epoll_event evs[512];
    while (!stop_flag) {
        int k = epoll_wait(ep, evs, 512, 200);
        for (int j = 0; j < k; j++) {
            struct sconn *c = evs[j].data.ptr;
            if (c->kind >= S_LISTEN) {
                for (;;) {
                    int s = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (s < 0) {
                        if (errno == EMFILE || errno == ENFILE) {
                            /* out of fds: stop polling the listeners (no
                             * busy loop) until a connection closes */
                            for (int l = 0; l < 3; l++)
                                epoll_ctl(ep, EPOLL_CTL_DEL, listeners[l]->fd, NULL);
                            paused = 1;
                        }
                        break;
                    }
                    int one = 1;
                    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct sconn *n = calloc(1, sizeof(*n));
                    if (!n) {
                        close(s);
                        break;
                    }
                    n->fd = s;
                    n->kind = c->kind - S_LISTEN;
                    struct epoll_event ev = {.events = n->kind == S_CHARGEN ? EPOLLIN | EPOLLOUT : EPOLLIN,
                                             .data.ptr = n};
                    epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev);
                }
                if (paused)
                    break;  /* the rest of evs may name the paused listeners: poll again */
                continue;
            }
            int closeit = 0;
            if (c->kind == S_CHARGEN) {
                if (evs[j].events & (EPOLLERR | EPOLLHUP))
                    closeit = 1;
                else if (evs[j].events & EPOLLIN) {
                    ssize_t r = read(c->fd, buf, sizeof(buf));
                    if (r == 0 || (r < 0 && errno != EAGAIN))
                        closeit = 1;
                }
                if (!closeit && (evs[j].events & EPOLLOUT)) {
                    ssize_t r = write(c->fd, gen, sizeof(gen));
                    if (r < 0 && errno != EAGAIN)
                        closeit = 1;
                }
            } else if (c->pend_len) {
                /* echo output pending: waiting for EPOLLOUT */
                ssize_t r = write(c->fd, c->pend + c->pend_off, c->pend_len);
                if (r < 0 && errno != EAGAIN)
                    closeit = 1;
                else if (r > 0) {
                    c->pend_off += (uint32_t)r;
                    c->pend_len -= (uint32_t)r;
                    if (!c->pend_len) {
                        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    }
                }
            } else {
                ssize_t r = read(c->fd, buf, sizeof(buf));
                if (r == 0 || (r < 0 && errno != EAGAIN))
                    closeit = 1;
                else if (r > 0 && c->kind == S_ECHO) {
                    ssize_t w = write(c->fd, buf, (size_t)r);
                    if (w < 0 && errno != EAGAIN)
                        closeit = 1;
                    else if (w < r) {
                        if (w < 0)
                            w = 0;
                        if (!c->pend)
                            c->pend = malloc(IOBUF);
                        memcpy(c->pend, buf + w, (size_t)(r - w));
                        c->pend_off = 0;
                        c->pend_len = (uint32_t)(r - w);
                        struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
                        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    }
                }
            }
            if (closeit) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                free(c->pend);
                free(c);
                if (paused) {
                    for (int l = 0; l < 3; l++) {
                        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = listeners[l]};
                        epoll_ctl(ep, EPOLL_CTL_ADD, listeners[l]->fd, &ev);
                    }
                    paused = 0;
                }
            }
        }
    }
}

static void mode_serve(void)
{
    raise_nofile(1 << 17);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    int nw = O.workers < 1 ? 1 : O.workers > 64 ? 64 : O.workers;
    pid_t parent = getpid(), kids[64];
    int ready[2] = {-1, -1}, nkids = 0;
    if (nw > 1 && pipe2(ready, O_CLOEXEC) != 0)
        die("pipe2");
    fflush(stdout);
    for (int k = 1; k < nw; k++) {
        pid_t p = fork();
        if (p < 0)
            break;
        if (p == 0) {
            /* a worker: stops with the parent (SIGTERM from it, or its death) */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent)
                _exit(1);
            close(ready[0]);
            int ep = epoll_create1(EPOLL_CLOEXEC);
            char ok = serve_bind(ep, 1) == 0 ? 'y' : 'n';
            if (write(ready[1], &ok, 1) != 1 || ok != 'y')
                _exit(1);
            close(ready[1]);
            serve_loop(ep);
            _exit(0);
        }
        kids[nkids++] = p;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int bound = serve_bind(ep, nw > 1) == 0;
    int up = 1;
    if (nw > 1) {
        close(ready[1]);
        /* every worker has bound its listeners (bounded: 10 s) */
        uint64_t until = now_ns() + 10000000000ull;
        int got = 0;
        while (got < nkids && now_ns() < until) {
            struct pollfd p = {.fd = ready[0], .events = POLLIN};
            if (poll(&p, 1, 200) <= 0)
                continue;
            char c;
            ssize_t r = read(ready[0], &c, 1);
            if (r <= 0 || c != 'y')
                break;
            got++;
        }
        close(ready[0]);
        up = got == nkids && nkids == nw - 1;
    }
    if (bound && up) {
        printf("loadgen serve: listening on %s ports %d %d %d (%d process%s)\n", O.host, O.port, O.port + 2,
               O.port + 12, nw, nw > 1 ? "es" : "");
        fflush(stdout);
        serve_loop(ep);
    }
    for (int k = 0; k < nkids; k++)
        kill(kids[k], SIGTERM);
    uint64_t until = now_ns() + 5000000000ull;
    int left = nkids;
    while (left > 0 && now_ns() < until) {
        pid_t r = waitpid(-1, NULL, WNOHANG);
        if (r > 0)
            left--;
        else if (r < 0)
            break;
        else {
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (left > 0)
        for (int k = 0; k < nkids; k++) {
            kill(kids[k], SIGKILL);
            waitpid(kids[k], NULL, 0);
        }
    if (!bound)
        die("bind/listen");
    if (!up)
        fail("a serve worker did not start");
    printf("loadgen serve: stopped\n");
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: loadgen rr|bulk|bulk-rx|crr|conns|idle|serve [options]\n");
        return 2;
    }
    O.mode = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--host")) O.host = v;
        else if (!strcmp(k, "--port")) O.port = atoi(v);
        else if (!strcmp(k, "--conns")) O.conns = atoi(v);
        else if (!strcmp(k, "--size")) O.size = atoi(v);
        else if (!strcmp(k, "--time")) O.time_s = atof(v);
        else if (!strcmp(k, "--max")) O.max = atoll(v);
        else if (!strcmp(k, "--bytes")) O.bytes = atoll(v);
        else if (!strcmp(k, "--count")) O.count = atoll(v);
        else if (!strcmp(k, "--warmup")) O.warmup = atoi(v);
        else if (!strcmp(k, "--cpu")) O.cpu = atoi(v);
        else if (!strcmp(k, "--window")) O.window = atoi(v);
        else if (!strcmp(k, "--src")) O.src = strdup(v);
        else if (!strcmp(k, "--per-worker")) O.per_worker = atoll(v);
        else if (!strcmp(k, "--workers")) O.workers = atoi(v);
        else {
            fprintf(stderr, "loadgen: unknown option %s\n", k);
            return 2;
        }
    }
    if (O.conns < 1 || O.size < 1 || O.size > 65536 || O.time_s <= 0 || O.count < 0 || O.bytes < 0)
        fail("bad option value");
    if (O.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(O.cpu, &set);
        sched_setaffinity(0, sizeof(set), &set);
    }
    signal(SIGPIPE, SIG_IGN);
    /* the hard bound of every client mode: --time (idle: 30 s to open the
     * connections, then --time idle; rr stops itself at --time) */
    deadline_ns = now_ns() + (uint64_t)((!strcmp(O.mode, "idle") ? 30.0 : O.time_s + 1.0) * 1e9);
    if (!strcmp(O.mode, "rr"))
        mode_rr();
    else if (!strcmp(O.mode, "bulk"))
        mode_bulk(0);
    else if (!strcmp(O.mode, "bulk-rx"))
        mode_bulk(1);
    else if (!strcmp(O.mode, "crr"))
        mode_crr();
    else if (!strcmp(O.mode, "conns"))
        mode_conns(0);
    else if (!strcmp(O.mode, "idle"))
        mode_conns(1);
    else if (!strcmp(O.mode, "serve"))
        mode_serve();
    else
        fail("unknown mode");
    fflush(stdout);
    return 0;
}
