"""Every shell block in README.md and docs/*.md says whether the docs test runs it
(tests/lab/test_docs.py), so a new command cannot slip past it unmarked."""

from tests.docs_blocks import all_blocks, blocks


def test_every_shell_block_is_marked():
    unmarked = [b.where for b in all_blocks() if b.mark is None]
    assert not unmarked, f"mark these with <!-- runnable --> or <!-- not runnable: why -->: {unmarked}"


def test_runnable_blocks_exist_in_the_pages_a_newcomer_follows():
    runnable = {b.where.split(":")[0] for b in all_blocks() if b.mark == "runnable"}
    assert {"README.md", "docs/lab.md", "docs/admin.md", "docs/capture.md", "docs/install.md", "docs/cli.md"} <= runnable


def test_the_parser(tmp_path):
    (tmp_path / "docs").mkdir()
    f = tmp_path / "docs" / "x.md"
    f.write_text("text\n<!-- runnable -->\n```sh\necho a\n```\n\n```yaml\na: 1\n```\n"
                 "<!-- not runnable: needs a cluster -->\n\n```bash\nkubectl get pods\n```\n```sh\nls\n```\n"
                 "<!-- not runnable: -->\n```sh\nx\n```\n")
    got = [(b.where, b.mark, b.text) for b in blocks(f, tmp_path)]
    assert got == [("docs/x.md:3", "runnable", "echo a\n"), ("docs/x.md:12", "not runnable", "kubectl get pods\n"),
                   ("docs/x.md:15", None, "ls\n"), ("docs/x.md:19", None, "x\n")]
