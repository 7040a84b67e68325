"""The job queue and its workers: train, eval and grid jobs with events, cancel and resume.

    from modelmill.jobs.queue import JobQueue
    job = JobQueue(open_store()).submit("train", {"data": "reviews-train"})
    # a worker (`modelmill worker`, or `modelmill up`) runs it in a subprocess
"""
