"""The fidelity protocol: metrics (whole frame and head region), the reference points every table shows
(mean-colour template, per-subject fit), and the evaluators the train loop, `headsup eval` and the
benchmarks share."""
