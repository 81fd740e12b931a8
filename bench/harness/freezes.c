/*
 * How often, and for how long, this CPU stops running the program on it.
 *
 * Spins for SECONDS reading the monotonic clock and counts every gap between
 * two consecutive readings longer than THRESHOLD_MS: time in which this
 * thread did not run although it never waited. On a virtual machine that is
 * mostly the host running something else (steal time, which the guest's
 * /proc/stat undercounts); interrupts add short gaps. Pin it with taskset.
 *
 *   freezes SECONDS THRESHOLD_MS
 *
 * Prints one line: gaps, their total in ms, the share of the time they
 * took, the longest gap, and the total of the gaps at or above 1 ms.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: freezes SECONDS THRESHOLD_MS\n");
    return 2;
  }
  double seconds = atof(argv[1]);
  double threshold = atof(argv[2]) / 1000.0;
  if (seconds <= 0 || threshold <= 0) {
    fprintf(stderr, "freezes: SECONDS and THRESHOLD_MS must be positive\n");
    return 2;
  }
  double start = now(), last = start, total = 0, longest = 0, over_1ms = 0;
  long gaps = 0;
  for (;;) {
    double t = now();
    double gap = t - last;
    if (gap > threshold) {
      gaps++;
      total += gap;
      if (gap > longest) longest = gap;
      if (gap >= 0.001) over_1ms += gap;
    }
    last = t;
    if (t - start >= seconds) break;
  }
  double elapsed = last - start;
  printf("gaps %ld  total_ms %.1f  share %.2f%%  longest_ms %.2f  total_1ms_plus_ms %.1f\n",
         gaps, total * 1000, 100 * total / elapsed, longest * 1000, over_1ms * 1000);
  return 0;
}
