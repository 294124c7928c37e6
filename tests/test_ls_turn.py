"""``curation.labelstudio.turn``: a loop turn reads the project once, and again only after it changed something."""

from __future__ import annotations

from curation.labelstudio.project import find_project
from curation.labelstudio.turn import turn_reads
from tests.fake_labelstudio import FakeLabelStudio


def test_a_turn_reads_the_project_once_until_it_writes() -> None:
    fake = FakeLabelStudio()
    created = fake.create_project("turn-project", '<View><Image name="image" value="$image"/></View>')
    ls = turn_reads(fake)
    fake.calls.clear()
    first = find_project(ls, "turn-project")
    second = find_project(ls, "turn-project")
    assert first == second and first is not None and first["id"] == created["id"]
    assert fake.calls == ["projects_titled", "project"]  # the second lookup asked nothing

    first["model_version"] = "edited by a handle"  # a caller's copy: the kept answer is unchanged
    third = find_project(ls, "turn-project")
    assert third is not None and third.get("model_version") != "edited by a handle"

    ls.set_ranking(int(created["id"]), "curate-tag")  # a write: the next read asks the server again
    fourth = find_project(ls, "turn-project")
    assert fourth is not None and fourth["model_version"] == "curate-tag"
    assert fake.calls == ["projects_titled", "project", "set_ranking", "projects_titled", "project"]
    assert ls.url == fake.url
