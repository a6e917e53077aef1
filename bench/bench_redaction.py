"""Redaction throughput and recall: course_lib.redaction vs Presidio and detect-secrets, in one process.

Every tool gets the same text: the labelled corpus (course_lib/data/redaction_corpus.jsonl) split
into lines, shuffled with a fixed seed and repeated to --size MB; each tool is called once per
line, as a logging filter would call it. Presidio runs offline: its AnalyzerEngine gets a blank
spaCy English pipeline saved to a temporary folder (no model download; the pattern recognisers
for e-mails, phones, cards, IBANs and URLs need none) and tldextract is kept from fetching the
public-suffix list. Presidio is timed on `analyze` alone and detect-secrets on `scan_line` with
its default plugins: they only find, while course_lib also rewrites the text, so their figures
are generous.

Recall is measured on the corpus spans of the kinds each tool covers. For the other tools a span
counts as found when a finding of a matching type overlaps it; course_lib is shown by that rule and
by its own stricter one (same kind, same span). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import resources
from importlib.metadata import version

from course_lib.redaction import KINDS, find, redact

PRESIDIO_KINDS = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "card", "IBAN_CODE": "iban"}
DETECT_SECRETS_KINDS = {"AWS Access Key": "aws_access_key_id", "GitHub Token": "github_token",
                        "Slack Token": "slack_token", "Stripe Access Key": "stripe_key", "JSON Web Token": "jwt",
                        "Private Key": "private_key", "OpenAI Token": "openai_key", "GitLab Token": "gitlab_token",
                        "SendGrid API Key": "sendgrid_key", "NPM tokens": "npm_token"}
SLACK_WEBHOOK = "https://hooks.slack.com/"  # detect-secrets reports an incoming-webhook URL as a "Slack Token"
DETECT_SECRETS_COVERS = (*DETECT_SECRETS_KINDS.values(), "slack_webhook")
Span = tuple[str, int, int]


def load_corpus() -> list[dict]:
    text = resources.files("course_lib").joinpath("data/redaction_corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def labelled(item: dict) -> list[Span]:
    spans, at = [], 0
    for span in item["spans"]:
        start = item["text"].index(span["value"], at)
        at = start + len(span["value"])
        spans.append((span["kind"], start, at))
    return spans


def workload(corpus: list[dict], megabytes: float) -> list[str]:
    """Corpus lines in a fixed shuffled order (so a small sample mixes every kind), repeated."""
    lines = "\n".join(item["text"] for item in corpus).splitlines()
    random.Random(0).shuffle(lines)
    out: list[str] = []
    size = 0
    while size < megabytes * 1e6:
        line = lines[len(out) % len(lines)]
        out.append(line)
        size += len(line.encode()) + 1
    return out


# --- the contenders ---------------------------------------------------------------------------------
def presidio_analyzer():  # type: ignore[no-untyped-def]
    """An AnalyzerEngine that needs no network: a blank spaCy pipeline from a temporary folder."""
    import spacy
    import tldextract
    import tldextract.tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())  # the bundled snapshot only
    folder = tempfile.mkdtemp(prefix="blank-en-")
    spacy.blank("en").to_disk(folder)
    config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": folder}]}
    engine = NlpEngineProvider(nlp_configuration=config).create_engine()
    return AnalyzerEngine(nlp_engine=engine, supported_languages=["en"])


def presidio_spans(analyzer, text: str) -> list[Span]:  # type: ignore[no-untyped-def]
    results = analyzer.analyze(text, language="en", entities=[*PRESIDIO_KINDS, "URL"])
    return [(PRESIDIO_KINDS.get(r.entity_type, r.entity_type), r.start, r.end) for r in results]


def detect_secrets_spans(text: str) -> list[Span]:
    """scan_line reports values, not positions: each value is located in its line."""
    from detect_secrets.core.scan import scan_line

    spans: list[Span] = []
    offset = 0
    for line in text.split("\n"):
        for secret in scan_line(line):
            value = secret.secret_value or ""
            at = line.find(value) if value else -1
            if at >= 0:
                kind = "slack_webhook" if value.startswith(SLACK_WEBHOOK) else \
                    DETECT_SECRETS_KINDS.get(secret.type, secret.type)
                spans.append((kind, offset + at, offset + at + len(value)))
        offset += len(line) + 1
    return spans


# --- measuring ----------------------------------------------------------------------------------------
def best_seconds(tools: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Best of `repeat` runs per tool, the runs interleaved so drift in machine speed hits all alike."""
    best = dict.fromkeys(tools, float("inf"))
    for _ in range(repeat):
        for name, run in tools.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def recall(corpus: list[dict], kinds: Iterable[str], spans_of: Callable[[str], list[Span]],
           exact: bool = False) -> dict[str, float]:
    """Per kind, the share of labelled spans found (overlap with the same kind, or the exact span)."""
    kinds = set(kinds)
    found = dict.fromkeys(kinds, 0)
    total = dict.fromkeys(kinds, 0)
    for item in corpus:
        truth = [s for s in labelled(item) if s[0] in kinds]
        if not truth:
            continue
        got = spans_of(item["text"])
        for kind, start, end in truth:
            total[kind] += 1
            if exact:
                found[kind] += (kind, start, end) in got
            else:
                found[kind] += any(k == kind and s < end and start < e for k, s, e in got)
    return {k: round(found[k] / total[k], 3) for k in sorted(kinds) if total[k]}


def overall(per_kind: dict[str, float], corpus: list[dict]) -> float:
    counts = {k: sum(1 for item in corpus for s in item["spans"] if s["kind"] == k) for k in per_kind}
    return round(sum(per_kind[k] * counts[k] for k in per_kind) / sum(counts.values()), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=0.01, help="MB of text per run (default 0.01: about a second)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the best one counts")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # Presidio warns about the recognisers a blank pipeline cannot serve

    from detect_secrets.settings import default_settings

    corpus = load_corpus()
    lines = workload(corpus, args.size)
    megabytes = sum(len(line.encode()) + 1 for line in lines) / 1e6
    analyzer = presidio_analyzer()

    def ours(text: str) -> list[Span]:
        return [(f.kind, f.start, f.end) for f in find(text)]


    with default_settings():
        seconds = best_seconds({
            "course_lib": lambda: [redact(line) for line in lines],
            "presidio": lambda: [presidio_spans(analyzer, line) for line in lines],
            "detect-secrets": lambda: [detect_secrets_spans(line) for line in lines],
        }, args.repeat)
        recalls = {
            "course_lib": recall(corpus, KINDS, ours),
            "presidio": recall(corpus, PRESIDIO_KINDS.values(), lambda t: presidio_spans(analyzer, t)),
            "detect-secrets": recall(corpus, DETECT_SECRETS_COVERS, detect_secrets_spans),
        }
    exact = recall(corpus, KINDS, ours, exact=True)
    mbps = {name: megabytes / s for name, s in seconds.items()}
    ours_on_theirs = {name: recall(corpus, kinds, ours) for name, kinds in
                      (("presidio", PRESIDIO_KINDS.values()), ("detect-secrets", DETECT_SECRETS_COVERS))}

    print(f"{megabytes:.3f} MB in {len(lines)} lines, one call per line, best of {args.repeat}")
    print(f"{'tool':15} {'MB/s':>8} {'course_lib is':>14}  {'recall (theirs / course_lib) on the kinds they cover'}")
    for name in seconds:
        per_kind = recalls[name]
        ratio = mbps["course_lib"] / mbps[name]
        mine = ours_on_theirs.get(name, per_kind)
        detail = ", ".join(f"{k} {v:.2f}/{mine[k]:.2f}" for k, v in per_kind.items()) if name != "course_lib" else \
            f"all {len(KINDS)} kinds, overlap {overall(per_kind, corpus):.3f}, exact span {overall(exact, corpus):.3f}"
        print(f"{name:15} {mbps[name]:8.3f} {ratio:13.1f}x  {detail}")
    print(json.dumps({
        "bench": "redaction_throughput_and_recall",
        "presidio": version("presidio-analyzer"),
        "detect_secrets": version("detect-secrets"),
        "megabytes": round(megabytes, 4),
        "mb_per_s": {k: round(v, 4) for k, v in mbps.items()},
        "course_lib_faster_by": {k: round(mbps["course_lib"] / v, 1) for k, v in mbps.items() if k != "course_lib"},
        "recall_overlap": recalls,
        "course_lib_recall_on_their_kinds": ours_on_theirs,
        "course_lib_recall_exact": exact,
    }))


if __name__ == "__main__":
    main()
