/* Read-only memory bandwidth, the access pattern of a decode step (every weight byte read once,
 * nothing written), on small or huge pages. Written for govbox's benchmarks, beside triad.c: on a
 * virtual machine a TLB miss walks two page tables, and the gap between the two page sizes here
 * is what drivers/src/quant/hugebuf.rs measured before putting weights on huge pages.
 *
 *   gcc -O3 -march=native -fopenmp bench/readbw.c -o readbw
 *   OMP_NUM_THREADS=2 ./readbw [MIB [PASSES [small|huge]]]     (defaults: 1600 MiB, 5, huge)
 *
 * One anonymous buffer of MIB MiB, advised MADV_HUGEPAGE (huge) or MADV_NOHUGEPAGE (small) before
 * it is first written, each thread writing and later reading its own contiguous share, four 64-byte
 * vectors at a time added together (so that the loads, not the adds, set the pace). Prints one JSON
 * object: {"threads", "mib", "pages", "passes", "best_gbs", "mean_gbs", "worst_gbs",
 * "anon_huge_kb", "sum"}; anon_huge_kb is the process's AnonHugePages after the buffer was
 * written, to show whether the kernel gave huge pages at all; sum is the float sum of the last
 * pass, printed only so that the reads cannot be left out (its rounding depends on the threads).
 */
#define _GNU_SOURCE
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Sixteen floats, one 64-byte vector (GCC's vector extension: one AVX-512 register where the
 * CPU has them, two or four narrower ones elsewhere). */
typedef float v16 __attribute__((vector_size(64)));

static double now(void) { return omp_get_wtime(); }

static long anon_huge_kb(void) {
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 1600;
    int passes = argc > 2 ? atoi(argv[2]) : 5;
    int huge = !(argc > 3 && strcmp(argv[3], "small") == 0);
    if (mib <= 0 || passes <= 0) {
        fprintf(stderr, "usage: readbw [MIB [PASSES [small|huge]]]\n");
        return 2;
    }
    size_t bytes = (size_t)mib << 20;
    float *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise(buf, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    size_t n = bytes / sizeof(float);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    long ahp = anon_huge_kb();
    double best = 0, worst = 1e30, sum = 0, total = 0;
    for (int p = 0; p < passes; p++) {
        double t0 = now();
#pragma omp parallel reduction(+ : total)
        {
            v16 acc = {0};
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 64) {
                v16 a, b, c, d;
                memcpy(&a, buf + i, 64);
                memcpy(&b, buf + i + 16, 64);
                memcpy(&c, buf + i + 32, 64);
                memcpy(&d, buf + i + 48, 64);
                acc += (a + b) + (c + d);
            }
            for (int l = 0; l < 16; l++) total += acc[l];
        }
        double gbs = bytes / (now() - t0) / 1e9;
        best = gbs > best ? gbs : best;
        worst = gbs < worst ? gbs : worst;
        sum += gbs;
    }
    printf("{\"threads\": %d, \"mib\": %ld, \"pages\": \"%s\", \"passes\": %d, \"best_gbs\": %.2f, "
           "\"mean_gbs\": %.2f, \"worst_gbs\": %.2f, \"anon_huge_kb\": %ld, \"sum\": %.0f}\n",
           omp_get_max_threads(), mib, huge ? "huge" : "small", passes, best, sum / passes, worst, ahp, total);
    return 0;
}
