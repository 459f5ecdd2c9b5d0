"""The teacher's two basic-reading prompts, verbatim from the paper (Tables 1 and 2).

Each prompt is raw few-shot completion text (no chat template): the task description, the paper's
few-shot examples, then the input slot. Every field is a label line followed by its text on the next
line, as the tables print them; examples are separated by a blank line.

    from brdlib.prompts import get_template
    ner = get_template("ner")
    prompt = ner.render("Paris is the capital of France.")   # ends with "Output:\\n"
    ner.stop                                                  # where a response ends

The response is what follows the prompt: for NER the text after ``Output:``; for question raising
and answering (QRA) the ``Question:`` / ``Answer:`` block, as in Table 2's bottom row, where the
response itself starts with ``Question:``. A response ends at the next example marker (the input
label, e.g. ``Enter a sentence:``) or at the blank line that separates examples.

The same prompts read downstream task inputs (the relaxed protocol, BRD²): :meth:`PromptTemplate.render`
takes any text and folds its line breaks into spaces, so a multi-line input cannot break the layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

__all__ = [
    "BLANK_LINE", "DROP_REASONS", "NER_TEMPLATE", "PAPER_INPUT", "PAPER_RESPONSES", "QRA_TEMPLATE", "TEMPLATES",
    "CleanResponse", "PromptTemplate", "clean_response", "get_template", "is_echo", "is_repetitive",
    "normalize_input", "parse_fields", "render_prompt", "trim_response",
]

BLANK_LINE = "\n\n"


@dataclass(frozen=True)
class PromptTemplate:
    """A few-shot completion prompt: description, labelled examples, and the input slot.

    ``labels[0]`` labels the input sentence; the remaining labels are the response's fields.
    ``prompt_output_labels`` says how many of those response labels the prompt itself writes after
    the input (NER writes ``Output:``; QRA writes none: its response starts with ``Question:``).
    """

    behaviour: str
    title: str
    description: str
    labels: tuple[str, ...]
    examples: tuple[tuple[str, ...], ...]  # each: input text, then one text per response label
    prompt_output_labels: int

    def __post_init__(self) -> None:
        for example in self.examples:
            if len(example) != len(self.labels):
                raise ValueError(f"{self.behaviour}: example {example[0]!r} needs {len(self.labels)} fields")

    @property
    def marker(self) -> str:
        """The label that opens every example; the next occurrence ends a response."""
        return self.labels[0]

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings for a backend: the next example marker, or the blank line before it."""
        return (self.marker, BLANK_LINE)

    @property
    def response_labels(self) -> tuple[str, ...]:
        """Labels that belong to the response text (empty for NER, Question/Answer for QRA)."""
        return self.labels[1 + self.prompt_output_labels:]

    def format_block(self, fields: tuple[str, ...]) -> str:
        """One example: each label on its own line, its text on the next."""
        return "\n".join(f"{label}\n{text}" for label, text in zip(self.labels, fields, strict=True))

    @property
    def prefix(self) -> str:
        """Everything before the input slot: shared verbatim by every request (prefix caching)."""
        blocks = [self.description, *(self.format_block(ex) for ex in self.examples)]
        return BLANK_LINE.join(blocks) + BLANK_LINE + self.marker + "\n"

    def render(self, text: str) -> str:
        """The full prompt for one input ``text`` (a corpus sentence or a downstream task input)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt input must be a str, got {type(text).__name__}: {text!r}")
        slot = normalize_input(text)
        if not slot:
            raise ValueError(f"{self.behaviour} prompt input is empty after whitespace folding: {text!r}")
        tail = "".join(f"{label}\n" for label in self.labels[1:1 + self.prompt_output_labels])
        return f"{self.prefix}{slot}\n{tail}"

    def example_response(self, example: tuple[str, ...]) -> str:
        """What a response to ``example``'s input looks like, in this template's layout."""
        split = 1 + self.prompt_output_labels
        unlabelled = list(example[1:split])  # their labels are already written by the prompt
        labelled = [f"{label}\n{text}" for label, text in zip(self.response_labels, example[split:], strict=True)]
        return "\n".join(unlabelled + labelled)

    @property
    def fingerprint(self) -> str:
        """Short hash of everything that shapes the prompt text; part of every record's key."""
        blob = json.dumps([self.behaviour, self.description, self.labels, self.examples, self.prompt_output_labels])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def normalize_input(text: str) -> str:
    """Fold runs of whitespace (line breaks included) into single spaces and strip the ends."""
    return re.sub(r"\s+", " ", text).strip()


# Table 1 -------------------------------------------------------------------------------------------

NER_TEMPLATE = PromptTemplate(
    behaviour="ner",
    title="Table 1: named entity recognition",
    description=(
        "Perform named entity recognition on a given sentence without recognizing personal pronouns "
        "in the input sentence as human names."
    ),
    labels=("Enter a sentence:", "Output:"),
    examples=(
        (
            "Barack Obama was the 44th President of the United States.",
            'In this sentence, "Barack Obama" is a person name entity, and "United States" is a geopolitical entity.',
        ),
        (
            "I just bought a new MacBook Pro from Apple.",
            'In this sentence, "Apple" is an organization name entity, and "MacBook Pro" is a product name entity.',
        ),
        (
            "The Eiffel Tower is a famous landmark in Paris, France.",
            'In this sentence, "Eiffel Tower" is a landmark name entity, and "Paris" and "France" are '
            "geopolitical entities.",
        ),
    ),
    prompt_output_labels=1,
)

# Table 2 -------------------------------------------------------------------------------------------

QRA_TEMPLATE = PromptTemplate(
    behaviour="qra",
    title="Table 2: question raising and answering",
    description=(
        "Ask a question to the input sentence, you can ask questions about the content, structure or attitude "
        "of the sentence, and then find the answer to the corresponding question in the original sentence. "
        'Output in the format "Question: Answer:".'
    ),
    labels=("The sentence:", "Question:", "Answer:"),
    examples=(
        (
            "In order to graduate with honors, he needed to maintain a high GPA throughout college.",
            "What did he need to do in order to graduate with honors?",
            "Maintain a high GPA throughout college.",
        ),
    ),
    prompt_output_labels=0,
)

TEMPLATES: dict[str, PromptTemplate] = {t.behaviour: t for t in (NER_TEMPLATE, QRA_TEMPLATE)}

# The input both tables show at the bottom, and the paper's teacher (Vicuna-13B) response to it.
PAPER_INPUT = (
    "Belmont Estate is on the market for $63 million and boasts roughly 22,000 square feet of luxurious "
    "finishes and elaborate architecture on 1.28 acres."
)
PAPER_RESPONSES: dict[str, str] = {
    "ner": (
        'In this sentence, "Belmont Estate" is a geographic entity, "63 million" is a numerical entity representing '
        'the price of the estate, and "1.28 acres" is a geographic entity representing the size of the estate.'
    ),
    "qra": "Question:\nHow much does Belmont Estate cost?\nAnswer:\nBelmont Estate costs $63 million.",
}


def get_template(behaviour: str) -> PromptTemplate:
    """The template of ``behaviour``; an unknown name lists the accepted ones."""
    try:
        return TEMPLATES[behaviour]
    except KeyError:
        raise ValueError(f"unknown behaviour {behaviour!r}; accepted: {', '.join(TEMPLATES)}") from None


def render_prompt(behaviour: str, text: str) -> str:
    """Shorthand for ``get_template(behaviour).render(text)``."""
    return get_template(behaviour).render(text)


# Reading a response --------------------------------------------------------------------------------

DROP_REASONS = ("empty", "repetition", "echo", "malformed")
"""Why a response is dropped: nothing left after trimming; a repetition loop; a copy of the input, the
task description or a few-shot example; (QRA) no question and answer in it."""

_SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]{1,40}\|>|</s>|<s>|<eos>|<bos>|<pad>|<unk>")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CHAR_LOOP = re.compile(r"(.{1,12}?)\1{9,}", re.DOTALL)  # a short unit repeated 10+ times


@dataclass(frozen=True)
class CleanResponse:
    """A trimmed response and, if it is dropped, why (one of :data:`DROP_REASONS`)."""

    text: str
    drop_reason: str | None

    @property
    def kept(self) -> bool:
        return self.drop_reason is None


def _as_text(raw: object) -> str:
    """Any backend output as valid UTF-8 text: None is empty, bytes are decoded, lone surrogates replaced."""
    if raw is None:
        return ""
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("utf-8", errors="replace")
    text = raw if isinstance(raw, str) else str(raw)
    return text.encode("utf-8", errors="replace").decode("utf-8")


def trim_response(raw: object, template: PromptTemplate) -> str:
    """The response itself: text before any end-of-sequence token text, the next example marker, or the
    blank line that closes an example; control characters removed, line ends stripped."""
    text = _as_text(raw).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if m := _SPECIAL_TOKEN.search(text):
        text = text[:m.start()]
    text = text.lstrip()
    for stop in (template.marker, BLANK_LINE):
        if (i := text.find(stop)) >= 0:
            text = text[:i]
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def _fold(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def is_repetitive(text: str) -> bool:
    """A repetition loop: a short unit repeated 10+ times, a line said 3+ times, or word 4-grams mostly repeats."""
    if _CHAR_LOOP.search(text[:4000]):
        return True
    lines = [ln.strip().casefold() for ln in text.split("\n") if len(ln.strip()) >= 3]
    if lines and max(lines.count(ln) for ln in set(lines)) >= 3:
        return True
    words = text.casefold().split()
    if len(words) >= 16:
        grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
        if len(set(grams)) / len(grams) < 0.4:
            return True
    return False


def is_echo(text: str, template: PromptTemplate, source: str) -> bool:
    """A copy of the prompt rather than a reading of ``source``: the input itself (alone, or leading the
    response), the task description, or a few-shot example's input or response."""
    folded, src = _fold(text), _fold(source)
    if src and (folded == src or (len(src) >= 20 and folded.startswith(src))):
        return True
    if _fold(template.description) in folded or folded in {_fold(label) for label in template.labels}:
        return True
    for example in template.examples:
        if folded == _fold(template.example_response(example)):
            return src != _fold(example[0])
        if _fold(example[0]) in folded and _fold(example[0]) not in src:
            return True
    return False


def parse_fields(text: str, template: PromptTemplate) -> tuple[str, ...] | None:
    """The texts of a response's labelled fields (QRA: question, answer), labels on their own line or
    inline as in 'Question: ... Answer: ...'; None when a label is missing or a field has no word."""
    labels = template.response_labels
    if not labels:
        return (text,)
    pattern = r"\s*".join(rf"{re.escape(label)}\s*(.*?)" for label in labels)
    m = re.fullmatch(rf"\s*{pattern}\s*", text, re.DOTALL)
    if not m or not all(re.search(r"\w", field) for field in m.groups()):
        return None
    return tuple(field.strip() for field in m.groups())


def clean_response(raw: object, template: PromptTemplate, source: str) -> CleanResponse:
    """Trim ``raw`` (a backend's text for ``source``) and decide whether to keep it; never raises on odd output."""
    text = trim_response(raw, template)
    source = _as_text(source)
    if not re.search(r"\w", text):
        return CleanResponse("", "empty")
    if is_repetitive(text):
        return CleanResponse(text, "repetition")
    if is_echo(text, template, source):
        return CleanResponse(text, "echo")
    if parse_fields(text, template) is None:
        return CleanResponse(text, "malformed")
    return CleanResponse(text, None)
