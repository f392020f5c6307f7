"""The run itself: lifecycle, settings, config capture, redaction, meta, rank awareness.

May import `autolog.pipeline` and `autolog.store`; never `autolog.capture`, sinks or tools.
"""
