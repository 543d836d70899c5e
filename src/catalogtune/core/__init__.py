"""Shared by every stage, importing none: configs (``config``), small helpers (``util``), the
base-model registry (``models``), the prompt layout (``prompt``) and the HTML report kit
(``htmlreport``)."""
