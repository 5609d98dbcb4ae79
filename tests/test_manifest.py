from tasks.manifest import Manifest, Outcome


def test_records_and_pages_failures_of_one_run(tmp_path):
    m = Manifest(tmp_path)
    m.record([Outcome(f"k{i:04d}", i, "e", 1, None if i % 3 else "boom", bool(i % 2)) for i in range(2500)], "run1")
    m.record([Outcome("old", 1, "e", 2, "old failure", True)], "run0")
    failed = [row for rows in m.failed("run1", chunk=100) for row in rows]
    assert [r.key for r in failed] == [f"k{i:04d}" for i in range(0, 2500, 3)]
    retryable = [row for rows in m.failed("run1", retryable_only=True) for row in rows]
    assert all(r.retryable for r in retryable) and len(retryable) == len([i for i in range(0, 2500, 3) if i % 2])
    done = m.done_entries([f"k{i:04d}" for i in range(10)] + ["missing"])
    assert done == {f"k{i:04d}": (i, "e") for i in range(10) if i % 3}


def test_a_later_outcome_replaces_the_earlier_one(tmp_path):
    m = Manifest(tmp_path)
    m.record([Outcome("a", 5, "e1", 1, "HTTP 503", True)], "r")
    m.record([Outcome("a", 5, "e1", 2)], "r")
    assert list(m.failed("r")) == []
    assert m.done_entries(["a"]) == {"a": (5, "e1")}
    m.close()
    assert Manifest(tmp_path).done_entries(["a"]) == {"a": (5, "e1")}
