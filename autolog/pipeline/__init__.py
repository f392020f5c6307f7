"""From the training thread to the sinks: records, the run buffer, the writer thread.

May import `autolog.store`; never `autolog.core`, `autolog.capture` or tools.
"""
