/* What memory costs the first time it is touched, and what a model file's page cache gives when it
 * is read through a mapping. Written for govbox's benchmarks, beside readbw.c: on a virtual machine
 * whose balloon reports freed memory to the host, the first touch of memory is paid to the host,
 * and that cost, not the disk, decided govboxd's start-to-ready time on the Intel Xeon VM of
 * bench/RESULTS.md (bench/README.md, "What fresh memory costs on this VM").
 *
 *   gcc -O3 -march=native -fopenmp bench/pagecost.c -o pagecost
 *   ./pagecost anon MIB huge|small REPEATS
 *       maps MIB MiB of anonymous memory REPEATS times, advised MADV_HUGEPAGE or
 *       MADV_NOHUGEPAGE, writes one byte per 4 KiB page (the kernel zeroes each page or huge page
 *       on its first touch) and unmaps it again; prints the seconds and GB/s of each touch. The
 *       first repeat gets memory as the system has it; the later ones get what the previous one
 *       freed a moment before.
 *   OMP_NUM_THREADS=2 ./pagecost file PATH [PASSES]
 *       maps the file read-only, advised MADV_HUGEPAGE, touches one byte per 4 KiB page (reading
 *       what the page cache lacks), prints how much of the mapping the kernel mapped with huge
 *       page entries (FilePmdMapped in /proc/self/smaps) and then the read bandwidth of PASSES
 *       passes over it (default 4), four 64-byte vectors at a time as in readbw.c.
 *
 * Each result is one JSON object per line.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef float v16 __attribute__((vector_size(64)));

static const size_t PAGE = 4096;
static const size_t HUGE = 2u << 20;

/* The kB that the smaps entry of the mapping starting at `base` gives for `field`, or -1. */
static long smaps_kb(const void *base, const char *field) {
  FILE *f = fopen("/proc/self/smaps", "r");
  if (!f) return -1;
  char line[512], head[32];
  snprintf(head, sizeof head, "%lx-", (unsigned long)base);
  int in = 0;
  long kb = -1;
  size_t flen = strlen(field);
  while (fgets(line, sizeof line, f)) {
    if (!strncmp(line, head, strlen(head))) {
      in = 1;
    } else if (in && !strncmp(line, field, flen) && line[flen] == ':') {
      kb = atol(line + flen + 1);
      break;
    }
  }
  fclose(f);
  return kb;
}

static int anon(size_t mib, int huge, int repeats) {
  size_t len = mib << 20;
  for (int r = 0; r < repeats; r++) {
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(p, len, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    double t = omp_get_wtime();
    for (size_t i = 0; i < len; i += PAGE) p[i] = 1;
    double s = omp_get_wtime() - t;
    long ahp = smaps_kb(p, "AnonHugePages");
    printf("{\"mode\": \"anon\", \"mib\": %zu, \"pages\": \"%s\", \"repeat\": %d, \"touch_s\": %.3f, "
           "\"gbs\": %.2f, \"anon_huge_kb\": %ld}\n",
           mib, huge ? "huge" : "small", r, s, len / s / 1e9, ahp);
    fflush(stdout);
    munmap(p, len);
  }
  return 0;
}

static int file(const char *path, int passes) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) { perror(path); return 1; }
  struct stat st;
  if (fstat(fd, &st) != 0) { perror("fstat"); return 1; }
  /* Whole huge pages only, so that every pass reads the same full vectors. */
  size_t len = (size_t)st.st_size / HUGE * HUGE;
  if (len == 0) { fprintf(stderr, "%s: smaller than 2 MiB\n", path); return 1; }
  char *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) { perror("mmap"); return 1; }
  madvise(p, len, MADV_HUGEPAGE);
  double t = omp_get_wtime();
  volatile char sink = 0;
  for (size_t i = 0; i < len; i += PAGE) sink += p[i];
  double touch = omp_get_wtime() - t;
  long rss = smaps_kb(p, "Rss"), pmd = smaps_kb(p, "FilePmdMapped");
  double best = 0, sum = 0;
  float total = 0;
  for (int pass = 0; pass < passes; pass++) {
    t = omp_get_wtime();
    float part = 0;
#pragma omp parallel reduction(+ : part)
    {
      v16 acc = {0};
#pragma omp for schedule(static)
      for (size_t i = 0; i < len / 64; i += 4) {
        const v16 *q = (const v16 *)(p + i * 64);
        acc += q[0] + q[1] + q[2] + q[3];
      }
      for (int l = 0; l < 16; l++) part += acc[l];
    }
    double gbs = len / (omp_get_wtime() - t) / 1e9;
    if (gbs > best) best = gbs;
    sum += gbs;
    total = part;
  }
  printf("{\"mode\": \"file\", \"bytes\": %zu, \"threads\": %d, \"touch_s\": %.3f, \"rss_kb\": %ld, "
         "\"file_pmd_mapped_kb\": %ld, \"passes\": %d, \"best_gbs\": %.2f, \"mean_gbs\": %.2f, \"sum\": %g}\n",
         len, omp_get_max_threads(), touch, rss, pmd, passes, best, sum / passes, (double)total);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 5 && !strcmp(argv[1], "anon")) {
    return anon((size_t)atol(argv[2]), !strcmp(argv[3], "huge"), atoi(argv[4]));
  }
  if (argc >= 3 && !strcmp(argv[1], "file")) {
    return file(argv[2], argc >= 4 ? atoi(argv[3]) : 4);
  }
  fprintf(stderr, "usage: pagecost anon MIB huge|small REPEATS | pagecost file PATH [PASSES]\n");
  return 2;
}
