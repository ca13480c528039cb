"""Dense time-to-event targets: for every step of every training row, the time until the customer's next
activity, observed or censored.

At each step (an event, or a visit) the network is asked *when the next activity comes*. The answer is
known for every step but the last from the history itself; for the last it comes from the row's label
window [cutoff, cutoff + horizon), the same events its churn label reads, and is censored at the window's
end when nothing happens there. No target reads an event at or after cutoff + horizon, so a training
cutoff's targets stay inside the period its label may see (SnapshotPlan.check keeps that before the test
cutoff).
"""

from __future__ import annotations

import numpy as np

from churnwatch.data.snapshots import DAY_NS, EventLog, Snapshots
from churnwatch.features.encode import EncodedSequences, SequenceEncoder
from churnwatch.features.window import kept_steps


def fill_time_to_event(
    seqs: EncodedSequences,
    encoder: SequenceEncoder,
    log: EventLog,
    snaps: Snapshots,
    horizon_days: int,
    activity: np.ndarray | None = None,
) -> None:
    """Write `seqs.tte` (days) and `seqs.tte_observed` for `snaps`, encoded by `encoder` (the same steps).

    `activity`: which log events count as activity (data.label_events; None: all).
    """
    steps = kept_steps(log, snaps, encoder.window)
    if len(steps.first) != len(seqs.tte):
        raise ValueError(f"{len(steps.first)} steps for {len(seqs.tte)} encoded events: another encoder?")
    acts = np.flatnonzero(activity) if activity is not None else np.arange(len(log))
    # the first activity after the step's last line, if it is the same customer's
    k = np.searchsorted(acts, steps.stop - 1, side="right")
    nxt = acts[np.minimum(k, max(len(acts) - 1, 0))] if len(acts) else np.zeros(len(k), dtype=np.int64)
    customer = log.customer[steps.first]
    found = (k < len(acts)) & (log.customer[nxt] == customer) if len(acts) else np.zeros(len(k), bool)
    window_end = np.repeat(snaps.cutoff.view(np.int64) + np.int64(horizon_days) * DAY_NS, steps.lengths)
    observed = found & (log.ts[nxt] < window_end)
    until = np.where(observed, log.ts[nxt], window_end)
    seqs.tte[:] = np.maximum(until - log.ts[steps.first], 0) / DAY_NS
    seqs.tte_observed[:] = observed
