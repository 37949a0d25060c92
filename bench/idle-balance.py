#!/usr/bin/env python3
"""Where a machine's idle time comes from, from a scheduler trace.

Reads `perf script -F comm,cpu,time,event,trace` of a trace recorded with
`perf record -a -e sched:sched_switch,sched:sched_wakeup,sched:sched_wakeup_new,sched:sched_migrate_task`
and replays each CPU's run queue: which task runs, which tasks wait. It prints the share of
the CPUs' time spent idle, and the part of it when another CPU had a task waiting to run
(idle that a better balanced placement would have used), with the tasks that waited then
and how each came to wait there: woken onto a CPU that was busy (while another CPU was idle,
or not) or idle, preempted by another task, or moved there by the load balancer. Last, the wake-ups
that put a task on a busy CPU while another CPU was idle, by waker and wakee.

Usage (during a load run):
    perf record -q -a -e sched:sched_switch,sched:sched_wakeup,sched:sched_wakeup_new,sched:sched_migrate_task -o sched.data -- sleep 1
    perf script -i sched.data -F comm,cpu,time,event,trace | bench/idle-balance.py
"""
import collections
import re
import sys

# `comm` is the task running when the event fired: for a wake-up, the waker.
EVENT = re.compile(r"(.*?)\s*\[(\d+)\]\s+([\d.]+):\s+sched:(\w+): (.*)")
FIELD = re.compile(r"(\w+)=(\S+)")


def main():
    running = {}  # cpu -> pid running (0: idle)
    waiting = collections.defaultdict(dict)  # cpu -> {pid: (comm, how it came to wait)}
    queued_on = {}  # pid -> cpu whose queue it waits in
    last = None
    span = idle = both_idle = imbalanced = 0.0
    waited = collections.Counter()  # comm -> CPU time idle elsewhere while it waited
    why = collections.Counter()  # how the waiting task came to wait -> that time
    misplaced = collections.Counter()  # (waker, wakee) -> wake-ups onto a busy CPU, another idle

    def advance(t):
        nonlocal last, span, idle, both_idle, imbalanced
        if last is None:
            last = t
            return
        dt, last = t - last, t
        if len(running) < 2:  # until every CPU has been seen
            return
        span += dt
        idle_cpus = [c for c, pid in running.items() if pid == 0]
        idle += dt * len(idle_cpus)
        if len(idle_cpus) == len(running):
            both_idle += dt
        for c in idle_cpus:
            others = [o for o in running if o != c and waiting[o]]
            if others:
                imbalanced += dt
                for comm in {comm for o in others for comm, _ in waiting[o].values()}:
                    waited[comm] += dt
                for how in {how for o in others for _, how in waiting[o].values()}:
                    why[how] += dt

    for line in sys.stdin:
        m = EVENT.match(line.strip())
        if not m:
            continue
        waker = m[1].split()[0] if m[1] else "?"
        cpu, t, event, fields = int(m[2]), float(m[3]), m[4], dict(FIELD.findall(m[5]))
        advance(t)
        if event == "sched_switch":
            prev, nxt = int(fields["prev_pid"]), int(fields["next_pid"])
            # A task switched out while runnable (preempted) keeps waiting on this CPU.
            if prev != 0 and fields["prev_state"].startswith("R"):
                waiting[cpu][prev] = (fields["prev_comm"], "preempted")
                queued_on[prev] = cpu
            q = queued_on.pop(nxt, None)
            if q is not None:
                waiting[q].pop(nxt, None)
            running[cpu] = nxt
        elif event in ("sched_wakeup", "sched_wakeup_new"):
            pid, target = int(fields["pid"]), int(fields["target_cpu"])
            if running.get(target) != pid:
                q = queued_on.get(pid)
                if q is not None:
                    waiting[q].pop(pid, None)
                if running.get(target, 0) == 0:
                    how = "woken onto an idle CPU"  # waits only until that CPU switches to it
                elif any(c != target and r == 0 for c, r in running.items()):
                    how = "woken onto a busy CPU while another was idle"
                    misplaced[(waker, fields["comm"])] += 1
                else:
                    how = "woken onto a busy CPU"
                waiting[target][pid] = (fields["comm"], how)
                queued_on[pid] = target
        elif event == "sched_migrate_task":
            pid, src, dst = int(fields["pid"]), int(fields["orig_cpu"]), int(fields["dest_cpu"])
            if pid in waiting[src]:
                waiting[dst][pid] = (waiting[src].pop(pid)[0], "moved by the balancer")
                queued_on[pid] = dst

    if span == 0:
        sys.exit("no scheduler events with every CPU seen: record with perf record -a")
    cpus = len(running)
    print(
        f"{span:.3f} s on {cpus} CPUs: idle {idle / (cpus * span) * 100:.1f}% of CPU time; "
        f"every CPU idle {both_idle / span * 100:.1f}% of the time; "
        f"a CPU idle while another had a task waiting {imbalanced / (cpus * span) * 100:.1f}% of CPU time"
    )
    top = ", ".join(f"{comm} {t / (cpus * span) * 100:.2f}%" for comm, t in waited.most_common(6))
    print(f"  tasks waiting meanwhile: {top or 'none'}")
    how = ", ".join(f"{k} {t / (cpus * span) * 100:.2f}%" for k, t in why.most_common())
    print(f"  how they came to wait: {how or 'none'}")
    pairs = ", ".join(f"{a} -> {b} {n}" for (a, b), n in misplaced.most_common(5))
    print(f"  wake-ups onto a busy CPU while another was idle, waker -> wakee: {pairs or 'none'}")


if __name__ == "__main__":
    main()
