"""The peers taskq's worker is compared with in `bench/worker.py`: Celery and Dramatiq no-op apps."""
