"""From the training thread to the log and the sinks: records, the run buffer, the writer (the
run's log first) and one follower per sink.

May import `autolog.store` and `autolog.sinks.base`; never `autolog.core`, `autolog.capture` or tools.
"""
