"""lm-eval task configs (`<stock name>_local`) reading the benchmark files shipped under `data/`."""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
LOCAL_TASKS = (
    "arc_easy_local",
    "arc_challenge_local",
    "piqa_local",
    "hellaswag_local",
    "winogrande_local",
    "boolq_local",
    "openbookqa_local",
    "lambada_openai_local",
    "rte_local",
    "wikitext_local",
)

NOT_COMPARABLE = frozenset({"hellaswag_local", "boolq_local"})
"""Local copies whose prompts differ from the stock task's (evaluate/README.md): their numbers are not comparable
with stock numbers. HellaSwag's text is llama.cpp's preprocessed copy; BoolQ's passages lack the article title that
stock lm-eval's boolq prompt starts with."""
