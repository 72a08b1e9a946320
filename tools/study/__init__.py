"""fed-study: each hospital alone vs the federation vs all data pooled (cli), the baselines trained in
process (baselines) and the comparison written out (report)."""
