"""Integrations with training frameworks; each is imported only when used
(``from autolog.integrations.lightning import AutologCallback``)."""
