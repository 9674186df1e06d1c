"""HTML pages: a run's report.html and a sweep's, rendered through the Jinja2 templates in templates/ from the
files a run dir or sweep dir holds."""
