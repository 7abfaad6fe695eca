"""The plain version a competent developer writes from the design's first paragraph:
a FastAPI app that saves the uploads and enqueues an RQ job, a status endpoint that reads
the job from Redis, and plain ``rq worker`` processes running :func:`tasks.run_pipeline`.

It is what pipeq is measured against in ``bench/``; it checks nothing, has no lease, no
progress, no autoscaling. Configured by ``BASELINE_REDIS_URL``, ``BASELINE_QUEUE``,
``BASELINE_DATA_DIR`` and ``BASELINE_PIPELINE``.
"""
