"""lm-eval task configs (`<stock name>_local`) reading the benchmark files shipped under `data/`."""

from pathlib import Path

from ...config.evaluate import LOCAL_TASKS  # noqa: F401  (the task list lives below every stage)

TASKS_DIR = Path(__file__).resolve().parent

NOT_COMPARABLE = frozenset({"hellaswag_local", "boolq_local"})
"""Local copies whose prompts differ from the stock task's (evaluate/README.md): their numbers are not comparable
with stock numbers. HellaSwag's text is llama.cpp's preprocessed copy; BoolQ's passages lack the article title that
stock lm-eval's boolq prompt starts with."""
