"""The comparison of an experiment's results: the table, configurations, the recommendation,
charts, the HTML report and published numbers side by side."""
