/* A STREAM-like triad, a[i] = b[i] + s * c[i], to measure the memory bandwidth that decode is
 * bound by. Written for govbox's benchmarks (bench/run.sh); it follows STREAM's method: arrays of
 * doubles far larger than the last-level cache, first touched by the same threads that later use
 * them, the best of N timed passes, and bytes counted as 3 arrays x 8 bytes per element (two
 * reads and one write; the write-allocate read is not counted, as in STREAM).
 *
 *   gcc -O3 -march=native -fopenmp bench/triad.c -o triad
 *   OMP_NUM_THREADS=2 ./triad [MIB_PER_ARRAY [PASSES]]      (defaults: 1024 MiB, 10 passes)
 *
 * Prints one JSON object: {"threads", "mib_per_array", "passes", "best_gbs", "mean_gbs",
 * "worst_gbs", "check"}; check is "ok" when every element holds the expected value afterwards.
 */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 1024;
    int passes = argc > 2 ? atoi(argv[2]) : 10;
    if (mib < 1 || passes < 1) {
        fprintf(stderr, "usage: triad [MIB_PER_ARRAY >= 1 [PASSES >= 1]]\n");
        return 2;
    }
    size_t n = (size_t)mib * 1024 * 1024 / sizeof(double);
    double *a = aligned_alloc(64, n * sizeof(double));
    double *b = aligned_alloc(64, n * sizeof(double));
    double *c = aligned_alloc(64, n * sizeof(double));
    if (!a || !b || !c) {
        fprintf(stderr, "triad: cannot allocate 3 x %ld MiB; pass a smaller size\n", mib);
        return 1;
    }
    /* First touch by the same static schedule as the timed loop, so pages sit near their users. */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        a[i] = 0.0;
        b[i] = 1.0;
        c[i] = 2.0;
    }
    const double s = 3.0;
    double best = INFINITY, worst = 0.0, total = 0.0;
    /* One untimed pass warms the page tables and the threads. */
    for (int p = -1; p < passes; p++) {
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + s * c[i];
        double t = omp_get_wtime() - t0;
        if (p < 0) continue;
        if (t < best) best = t;
        if (t > worst) worst = t;
        total += t;
    }
    int ok = 1;
#pragma omp parallel for reduction(&& : ok)
    for (size_t i = 0; i < n; i++) ok = ok && a[i] == 7.0;
    double bytes = 3.0 * (double)n * sizeof(double);
    printf("{\"threads\": %d, \"mib_per_array\": %ld, \"passes\": %d, \"best_gbs\": %.3f, \"mean_gbs\": %.3f, "
           "\"worst_gbs\": %.3f, \"check\": \"%s\"}\n",
           omp_get_max_threads(), mib, passes, bytes / best / 1e9, bytes / (total / passes) / 1e9,
           bytes / worst / 1e9, ok ? "ok" : "FAILED");
    free(a);
    free(b);
    free(c);
    return ok ? 0 : 1;
}
