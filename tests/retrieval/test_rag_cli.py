"""`genlab rag` sub-app: index, search, ask (hashing embedder: no model load), and error messages.

    python -m pytest -q tests/retrieval/test_cli.py
"""

from typer.testing import CliRunner

from genlab.cli.rag import app

runner = CliRunner()


def test_index_search_ask(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "zoo.md").write_text("The city zoo opens at nine. Penguins are fed at noon every day.")
    (docs / "park.txt").write_text("The park has a lake with ducks and swans.")
    db = tmp_path / "store.db"
    result = runner.invoke(app, ["index", str(docs), "--db", str(db), "--embedder", "hashing-64", "--chunk-size", "8",
                                 "--overlap", "2"])
    assert result.exit_code == 0, result.output
    assert "added" in result.output and "store chunks" in result.output
    again = runner.invoke(app, ["index", str(docs), "--db", str(db)])  # embedder read back from the store
    assert again.exit_code == 0, again.output

    result = runner.invoke(app, ["search", "penguins fed", "--db", str(db), "-k", "2"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    assert "zoo.md" in result.output and "bm25:1" in result.output

    result = runner.invoke(app, ["ask", "When are the penguins fed?", "--db", str(db), "--show-prompt"], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    assert "noon" in result.output and "[1]" in result.output and "extractive baseline" in result.output


def test_errors_are_one_clear_line(tmp_path):
    result = runner.invoke(app, ["search", "x", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no store" in result.output
    result = runner.invoke(app, ["index", str(tmp_path / "missing"), "--db", str(tmp_path / "s.db")])
    assert result.exit_code == 2 and "no such file" in result.output
    (tmp_path / "a.txt").write_text("hello world")
    result = runner.invoke(app, ["index", str(tmp_path / "a.txt"), "--db", str(tmp_path / "s.db"), "--embedder",
                                 "hashing-32", "--chunk-size", "4", "--overlap", "4"])
    assert result.exit_code == 2 and "overlap" in result.output
