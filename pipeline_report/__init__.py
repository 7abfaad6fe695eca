"""pipeline.sh's report helpers: the plots of report.html and of the job's page, and the
fastp.html rewrite that makes its charts work offline. Ships next to pipeline.sh (the
worker image has both in /opt/pipeq); standard library only."""
