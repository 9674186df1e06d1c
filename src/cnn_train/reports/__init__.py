"""HTML pages: a run's report.html and a sweep's, rendered from the files a run dir or sweep dir holds."""
