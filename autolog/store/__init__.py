"""The local store on disk: the events.alog format, run files, and the reader.

Imports only `autolog.pipeline.records` and `autolog.core.settings` (the default directory).
"""
