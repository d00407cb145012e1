/*
 * sdd-virusevent: ClamAV's VirusEvent hook for sdd. clamd runs it for every detection and waits for it,
 * so it must cost almost nothing: a small C program (about 1 ms plus two fsyncs), where `sddctl submit
 * --clamav` costs an interpreter start (about 100 ms). It writes the detection `sddctl submit --clamav`
 * writes, into sdd's spool, by the same steps as client/sdd_client/spoolfile.py:
 *
 *   tmp/NAME (O_CREAT|O_EXCL|O_NOFOLLOW, 0640), written whole, fsync; rename into new/NAME; fsync new/
 *   (or, when new/ cannot be opened for reading - a member of sdd-submit on a 1730 directory - fsync the
 *   file again, which commits the rename with the journal on ext4, XFS and btrfs).
 *
 *     {"type":"malware","severity":"high","file_path":F,"threat_name":V,"scanner":"clamav",
 *      "source":"clamav","detected_at":"YYYY-MM-DDTHH:MM:SSZ"}
 *
 * F and V come from CLAM_VIRUSEVENT_FILENAME and CLAM_VIRUSEVENT_VIRUSNAME, the only variables clamd sets
 * (no PATH, no HOME). A file name is bytes: it is JSON-escaped, and a byte that is not part of valid UTF-8
 * becomes the escape \udcXX (XX = the byte), exactly as Python's surrogateescape decodes it; the daemon
 * accepts these escapes and its file actions turn them back into the very same bytes.
 *
 * Usage: sdd-virusevent [--spool DIR] [--severity LEVEL]
 * The spool is --spool, else $SDD_SPOOL, else /var/spool/sdd (clamd passes no environment: put --spool on
 * the VirusEvent line when the spool is elsewhere). Exit status 0 when the detection is in new/ and durable,
 * 1 when it could not be written (the reason on standard error, which clamd logs), 2 on a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SPOOL "/var/spool/sdd"
#define MAX_DETECTION (1024 * 1024) /* the daemon refuses bigger spool files */

static const char *prog = "sdd-virusevent";

static void die(int status, const char *fmt, ...)
{
    va_list ap;
    char msg[4096];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One write: clamd's log gets the whole line even when several hooks run at once. */
    char line[4200];
    int n = snprintf(line, sizeof line, "%s: %s\n", prog, msg);
    if (n > 0)
        (void)!write(STDERR_FILENO, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    exit(status);
}

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n > MAX_DETECTION)
        die(1, "detection is larger than the %d bytes the spool accepts", MAX_DETECTION);
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        while (cap < b->len + n)
            cap *= 2;
        char *data = realloc(b->data, cap);
        if (data == NULL)
            die(1, "out of memory");
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* Length of the well-formed UTF-8 sequence at s (Unicode table 3-7, as Python's decoder), 0 if none. */
static size_t utf8_len(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F; /* U+D800..U+DFFF are not characters */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    } else
        return 0;
    if (left < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

/* A JSON string holding the bytes s: escapes for '"', '\\' and controls, \udcXX for non-UTF-8 bytes. */
static void put_json_string(struct buf *b, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t left = strlen(str);
    char esc[8];
    put(b, "\"", 1);
    while (left > 0) {
        unsigned char c = *s;
        size_t n = utf8_len(s, left);
        if (n == 0) {
            snprintf(esc, sizeof esc, "\\udc%02x", c);
            put(b, esc, 6);
            n = 1;
        } else if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20) {
            const char *named = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r"
                              : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
            if (named)
                put(b, named, 2);
            else {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                put(b, esc, 6);
            }
        } else
            put(b, (const char *)s, n);
        s += n;
        left -= n;
    }
    put(b, "\"", 1);
}

static void usage(void)
{
    die(2, "usage: %s [--spool DIR] [--severity LEVEL] (run by clamd's VirusEvent)", prog);
}

/* Opens SPOOL/sub without following a symlink; O_PATH, so a group member of a 1730 directory may hold it. */
static int open_dir(const char *spool, const char *sub)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", spool, sub) >= sizeof path)
        die(1, "spool path too long: %s", spool);
    int fd = open(path, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP)
            die(1, "spool directory %s does not exist (is sdd installed, is the spool right? --spool DIR)", path);
        die(1, "cannot open spool directory %s: %s", path, strerror(errno));
    }
    return fd;
}

int main(int argc, char **argv)
{
    const char *spool = NULL, *severity = "high";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--spool") == 0 && i + 1 < argc)
            spool = argv[++i];
        else if (strncmp(argv[i], "--spool=", 8) == 0)
            spool = argv[i] + 8;
        else if (strcmp(argv[i], "--severity") == 0 && i + 1 < argc)
            severity = argv[++i];
        else if (strncmp(argv[i], "--severity=", 11) == 0)
            severity = argv[i] + 11;
        else
            usage();
    }
    if (spool == NULL || *spool == '\0') {
        spool = getenv("SDD_SPOOL");
        if (spool == NULL || *spool == '\0')
            spool = DEFAULT_SPOOL;
    }
    if (*severity == '\0')
        usage();
    const char *file = getenv("CLAM_VIRUSEVENT_FILENAME");
    const char *virus = getenv("CLAM_VIRUSEVENT_VIRUSNAME");
    if (file == NULL || *file == '\0' || virus == NULL || *virus == '\0')
        die(2, "CLAM_VIRUSEVENT_FILENAME and CLAM_VIRUSEVENT_VIRUSNAME must be set (run by clamd's VirusEvent?)");

    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL || strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        die(1, "cannot format the time");
    struct buf json = {0};
    puts_(&json, "{\"type\":\"malware\",\"severity\":");
    put_json_string(&json, severity);
    puts_(&json, ",\"file_path\":");
    put_json_string(&json, file);
    puts_(&json, ",\"threat_name\":");
    put_json_string(&json, virus);
    puts_(&json, ",\"scanner\":\"clamav\",\"source\":\"clamav\",\"detected_at\":\"");
    puts_(&json, stamp);
    puts_(&json, "\"}");

    /* Maildir name: time in ns, pid, random, host (no '/' or ':'), as spoolfile.py makes it. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned char rnd[6];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        die(1, "getrandom: %s", strerror(errno));
    struct utsname un;
    char host[33] = "host";
    if (uname(&un) == 0) {
        size_t j = 0;
        for (const char *p = un.nodename; *p && j < 32; p++)
            if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-'
                || *p == '_')
                host[j++] = *p;
        host[j] = '\0';
        if (j == 0)
            strcpy(host, "host");
    }
    char name[160];
    snprintf(name, sizeof name, "%lld%09ld.%ld_%02x%02x%02x%02x%02x%02x.%s.json", (long long)ts.tv_sec,
             ts.tv_nsec, (long)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], host);

    int tmp = open_dir(spool, "tmp"), new_ = open_dir(spool, "new");
    int fd = openat(tmp, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0640);
    if (fd < 0)
        die(1, "cannot create %s/tmp/%s: %s", spool, name, strerror(errno));
    for (size_t done = 0; done < json.len;) {
        ssize_t w = write(fd, json.data + done, json.len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = w < 0 ? errno : EIO;
            unlinkat(tmp, name, 0);
            die(1, "cannot write the detection into %s: %s", spool, strerror(e));
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0) {
        int e = errno;
        unlinkat(tmp, name, 0);
        die(1, "cannot write the detection into %s: %s", spool, strerror(e));
    }
    if (renameat(tmp, name, new_, name) != 0) {
        int e = errno;
        unlinkat(tmp, name, 0);
        die(1, "cannot write the detection into %s: %s", spool, strerror(e));
    }
    char newpath[4096];
    snprintf(newpath, sizeof newpath, "%s/new", spool);
    int dir = open(newpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0 ? fsync(dir) != 0 : fsync(fd) != 0)
        die(1, "cannot make %s/new/%s durable: %s", spool, name, strerror(errno));
    return 0;
}
