"""core.evaluation: how good a trained model is, on held-out cases, said with its protocol.

evaluate (a run on its held-out split -> metrics.json, card, report.html), metrics (image- and
patient-level scores, each block labelled with its split, protocol and counts), thresholds (the
referral and case thresholds chosen on validation), intervals (bootstrap intervals over patients,
fold summaries), baselines (the simple models every classifier is compared with), figures (plotly
confusion, ROC and reliability plots), robustness (accuracy under stain shifts).

Deliberately thin: import the module you need (`from core.evaluation.evaluate import evaluate_run`).
"""
