"""docs/reliability.md lists every reliability regression test (generated, never stale)."""

from tests.reliability import catalogue


def test_docs_catalogue_is_up_to_date():
    text = catalogue.DOC.read_text(encoding="utf-8")
    assert catalogue.updated(text) == text, (
        "docs/reliability.md is out of date: run `python -m tests.reliability.catalogue`.")


def test_catalogue_has_a_row_per_test():
    rows = catalogue.rows()
    assert len(rows) == len(set(rows)) > 50
    assert any("test_killed_mid_epoch_and_resumed" in r for r in rows)
