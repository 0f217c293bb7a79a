/*
 * The pause program of the test node's pod sandboxes (image
 * localhost/mkb-pause:1, built by `cargo xtask testenv up`): holds the pod's
 * namespaces, reaps orphaned children, exits on SIGINT/SIGTERM. The same job
 * as Kubernetes' build/pause/linux/pause.c; no registry is reachable here,
 * so it is built locally with `gcc -static`.
 */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signo) { _exit(0); }

static void reap(int signo) {
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction on_stop = {.sa_handler = stop};
  struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &on_stop, NULL) < 0 ||
      sigaction(SIGTERM, &on_stop, NULL) < 0 ||
      sigaction(SIGCHLD, &on_child, NULL) < 0) {
    return 1;
  }
  for (;;) {
    pause();
  }
}
