"""The local store on disk: the events.alog format, run files, and the reader.

Imports only `autolog.pipeline.records` and `autolog.core.settings` (the default directory).
Modules: `format` (framing and codec, pure), `log` (`EventLog`, `read_batches`), `files` (run
directory, lock, run.json, PNGs, reserve), `reader` (`read_run`, `list_runs`).

A run directory ``<dir>/<project>/<run id>/`` holds:

``run.json``
    identity, status, config, meta and summary; replaced atomically (write a temporary file,
    fsync, rename) when the run starts, when its config changes and when it ends. Strict JSON:
    non-finite numbers are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``. Its
    ``"format"`` is the format version (2).
``events.alog``
    the append-only record log, the run's system of record. Little endian throughout::

        file    = b"AUTOLOG2" frame*
        frame   = sync seq length crc header_crc payload
        sync    = b"\\xffAL\\xfe"        4 bytes, starts every frame
        seq     = u64                   0, 1, 2, ... per record (continues when a log is reopened)
        length  = u32                   payload bytes
        crc     = u32                   crc32 of the payload
        header_crc = u32                crc32 of the 20 bytes sync..crc
        payload = b"B" u32:hlen JSON-header[hlen] arrays

    One frame per hand-off. The JSON header is ``{"step", "n", "keys", "hist", "media",
    "prog_bar", "config"}`` (all but ``step`` omitted when empty); the arrays follow it packed:
    scalars ``u32 key index[n]`` (into ``keys``), ``i64 step[n]``, ``f64 value[n]``,
    ``f64 wall time[n]``; then per ``hist`` item ``{"name", "step", "wall", "bins"}``,
    ``f64 edges[bins + 1]`` and ``f64 counts[bins]``. ``media`` items are
    ``{"kind", "name", "step", "wall", "path", "text"}`` (images and figures point at a PNG).

    Reading: a frame counts only when both checksums match and every count and length in its
    header fits its payload exactly. Otherwise the reader resynchronises at the next sync marker
    whose header checksum matches: a corrupt byte hides only its own record, a record with a
    lying header is skipped, a torn record (a writer killed mid-write, a full disk) is skipped
    once a later record follows it, and a torn last record ends the read (it may still be being
    written: reading again from the last offset picks it up).

    Version 1 files (``b"AUTOLOG1"``, records ``<u32 length><u32 crc32><payload>`` with payload
    kinds ``S`` scalars, ``H`` histograms, ``M`` media) are still read; without a sync marker
    that reader stops at the first torn or corrupt record. They are never appended to.
``media/``
    images and figures as PNG files, named ``<name>_<step>_<n>.png``.
``.lock``
    held (``flock``) by the writing process while the run is open: a run whose ``run.json`` still
    says ``running`` but whose lock is free was left by a process that died: ``crashed``.
``.reserve``
    1 MiB preallocated at the start and freed at the end, so that a run on a full disk can
    still record its final status in ``run.json``.
"""
