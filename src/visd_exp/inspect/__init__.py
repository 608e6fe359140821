"""Helpers for the inspection notebooks (notebooks/*.ipynb) and `make report`.

runs           find and load runs (a run or a multirun directory), metrics from CSV or offline wandb
wandb_offline  read the history of an offline `run-*.wandb` file
curves         NaN-skipping smoothing, mean over seeds, training-curve figures
table          the Table-5-style summary of the final window (reuses visd_exp.summarize)
colors         the diverging colour scale shared by the HTML and the PNG views of token credit
credit_dumps   find, load and pick from <run>/credit_dumps/step_NNNNNN.json
credit_html    tokens as coloured spans (Eq. 29-31)
credit_plot    the same as per-token bars (PNG)
notebook_html  a minimal executed-notebook -> HTML exporter
report         execute both notebooks for a run (`python -m visd_exp.inspect.report <dir>`)
"""
