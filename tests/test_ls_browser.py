"""What labelers see in Label Studio's web UI, in headless Chromium (tests/browser.py): a labeler logs in, clicks
**Label All Tasks** and gets curate's rank-1 task with its image loaded and the model's pre-annotation shown;
after a ``reprioritize`` the next task follows the new order; a second labeler gets the top of the queue that
nobody holds. A screenshot of each step is kept under the test artifacts (``ls-browser/``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import artifacts_dir  # the browser fixtures come from conftest: one Chromium per session
from tests.ls_support import LSApi, fresh_annotator
from tests.test_labelstudio import api, curate_json, select_args, title

__all__ = ["api"]  # fixtures
pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
TIMEOUT_MS = 60_000


class Labeler:
    """One person in their own browser context (only the local server may be reached)."""

    def __init__(self, browser: Any, url: str, user: LSApi, shots: Path, name: str) -> None:
        self.url, self.user, self.shots, self.name = url, user, shots, name
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.blocked: list[str] = []
        self.context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), self._block)
        self.page = self.context.new_page()
        self.api_calls: list[str] = []  # what the UI asked the server, for a failure's message
        self.page.on("response", self._seen)

    def _seen(self, response: Any) -> None:
        if "/api/" in response.url:
            body = response.text()[:300] if response.request.method == "POST" and not response.ok else ""
            self.api_calls.append(f"{response.request.method} {response.url} {response.status} {body}")

    def _block(self, route: Any) -> None:
        self.blocked.append(route.request.url)
        route.abort()

    def log_in(self) -> None:
        self.page.goto(f"{self.url}/user/login/")
        self.page.fill("input[name=email]", self.user.email)
        self.page.fill("input[name=password]", self.user.password)
        with self.page.expect_navigation():
            self.page.locator("form button[type=submit], form input[type=submit]").first.click()
        assert "/user/login" not in self.page.url, f"{self.name} could not log in"

    def _served(self, action: Any) -> int:
        """Run ``action`` and return the task id the label stream served for it."""
        try:
            with self.page.expect_response(
                lambda r: "next_task" in r.url or re.search(r"/next/?(\?|$)", r.url), timeout=30_000
            ) as got:
                action()
        except Exception as exc:
            raise AssertionError(f"{self.name}: no task served; the UI asked {self.api_calls[-8:]}") from exc
        response = got.value
        assert response.ok, f"the label stream answered {response.status}"
        return int(response.json()["id"])

    def label_all_tasks(self, project_id: int) -> int:
        self.page.goto(f"{self.url}/projects/{project_id}/data")
        button = self.page.get_by_role("button", name=re.compile("Label All Tasks", re.I))
        return self._served(lambda: button.click())

    def submit(self) -> int:
        """Submit the shown task as it is (the model's pre-annotation) and return the next task served."""
        button = self.page.locator("button:visible", has_text=re.compile(r"^\s*Submit\s*$"))
        return self._served(lambda: button.first.click())

    def shows(self, task_id: int, size: tuple[int, int], label: str) -> None:
        """The served task ``task_id`` is on screen: its image loaded (Label Studio fetches it and shows a ``blob:``
        URL of the bytes; ``size`` is the file's) and the model's pre-annotation (``label`` chosen)."""
        loaded = "([w, h]) => [...document.images].some(i => i.complete && i.naturalWidth == w && i.naturalHeight == h)"
        try:
            self.page.wait_for_function(loaded, arg=list(size), timeout=30_000)
        except Exception:
            shown = self.page.evaluate("[...document.images].map(i => [i.src, i.naturalWidth, i.naturalHeight])")
            raise AssertionError(f"{self.name}: the {size} image is not loaded; images on the page: {shown}") from None
        chosen = self.page.locator("input[type=radio]:checked, input[type=checkbox]:checked")
        chosen.first.wait_for(state="attached")
        assert chosen.count() == 1
        text = chosen.first.evaluate("e => (e.closest('label') || e.parentElement.parentElement).innerText")
        assert str(text).strip().startswith(label), f"{self.name}: {text!r} is chosen, the model predicted {label!r}"

    def shows_prediction_score(self, project_id: int, task_id: int, score: float) -> None:
        """The task opened from the Data Manager: the editor lists the model's prediction as a tab of its own
        (beside the labeler's annotations, never merged into them), with its confidence ("· 61.23%")."""
        self.page.goto(f"{self.url}/projects/{project_id}/data?task={task_id}")
        shown = self.page.locator('span[title^="Prediction score = "]')
        try:
            shown.first.wait_for(state="visible", timeout=30_000)
        except Exception:
            calls = self.api_calls[-8:]
            raise AssertionError(f"{self.name}: no prediction tab with a score; the UI asked {calls}") from None
        texts = [t.strip() for t in shown.all_inner_texts()]
        assert any(t.endswith(f"{score * 100:.2f}%") for t in texts), f"{texts} shown, the live score is {score}"

    def screenshot(self, step: str) -> Path:
        path = self.shots / f"{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def shots() -> Iterator[Path]:
    folder = artifacts_dir() / "ls-browser"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    yield folder


def _expected(api: LSApi, project_id: int, task_id: int) -> tuple[int, tuple[int, int], str]:
    """The served task, its image's size and the model's top class in its live prediction."""
    project = api.get(f"/api/projects/{project_id}")
    live = [p for p in api.predictions(project_id) if p["task"] == task_id]
    live = [p for p in live if p["model_version"] == project["model_version"]]
    assert len(live) == 1
    region = live[0]["result"][0]
    return task_id, (region["original_width"], region["original_height"]), region["value"]["choices"][0]


def test_labelers_in_the_browser_are_served_curates_queue(
    tmp_path: Path,
    ls_env: dict[str, str],
    ls_pool: Path,
    tiny_cls_model: Path,
    api: LSApi,
    label_studio: Any,
    browser: Any,
    shots: Path,
) -> None:
    name = title()
    db = f"sqlite:///{tmp_path / 'c.db'}"
    selected = curate_json(*select_args(ls_pool, tiny_cls_model, name, db, 8))  # the default strategy
    project = api.project_by_title(name)
    pid = project["id"]
    by_cid = {t["data"]["curation_id"]: t["id"] for t in api.tasks(pid)}
    ranked = [by_cid[r["item_id"]] for r in sorted(selected["items"], key=lambda r: r["rank"])]

    first = Labeler(browser, label_studio.url, fresh_annotator(label_studio.url), shots, "labeler 1")
    second = Labeler(browser, label_studio.url, fresh_annotator(label_studio.url), shots, "labeler 2")
    try:
        _steps(api, pid, ranked, name, db, ls_pool, tiny_cls_model, first, second)
    except BaseException:
        for who in (first, second):  # what each one saw when it failed
            who.screenshot(f"failed-{who.name.replace(' ', '')}")
        raise
    finally:
        first.close()
        second.close()
    assert sorted(p.name for p in shots.glob("*.png")) == [
        "1-labeler1-rank1-with-pre-annotation.png",
        "2-labeler1-next-after-reprioritize.png",
        "3-labeler2-next-in-order.png",
        "4-labeler2-prediction-tab-with-confidence.png",
    ]


def _steps(
    api: LSApi,
    pid: int,
    ranked: list[int],
    name: str,
    db: str,
    ls_pool: Path,
    tiny_cls_model: Path,
    first: Labeler,
    second: Labeler,
) -> None:
    first.log_in()
    served = first.label_all_tasks(pid)
    assert served == ranked[0], "Label All Tasks serves curate's rank 1"
    first.shows(*_expected(api, pid, served))
    first.screenshot("1-labeler1-rank1-with-pre-annotation")

    # the lead re-ranks while labeler 1 looks at rank 1
    common = ("--project", name, "--pool", str(ls_pool), "--model", str(tiny_cls_model), "--db", db)
    result = curate_json("reprioritize", *common, "--strategy", "random")  # seeded: a visibly different order
    assert result["changed"]
    new_order = [t["task_id"] for t in result["top"] if t["task_id"] != served]
    assert new_order[:2] != [t for t in ranked if t != served][:2], "the re-rank must change what comes next"

    after = first.submit()
    assert after == new_order[0], "after the re-rank the next task is the new queue's head"
    first.shows(*_expected(api, pid, after))
    first.screenshot("2-labeler1-next-after-reprioritize")

    # a second labeler: the top of the new queue that nobody holds (labeler 1 holds its head)
    second.log_in()
    theirs = second.label_all_tasks(pid)
    assert theirs == new_order[1], "a second labeler gets the next task in the documented order"
    second.shows(*_expected(api, pid, theirs))
    second.screenshot("3-labeler2-next-in-order")

    # the pre-annotation is recognisable as the model's: opened from the Data Manager, the task shows the live
    # prediction as its own tab, named by curate's ranking tag, with the model's confidence
    project = api.get(f"/api/projects/{pid}")
    tag = project["model_version"]
    (live,) = [p for p in api.predictions(pid) if p["task"] == theirs and p["model_version"] == tag]
    assert live["model_version"].startswith("curate-")
    assert all(r.get("origin") == "prediction" for r in live["result"])
    second.shows_prediction_score(pid, theirs, float(live["score"]))
    second.screenshot("4-labeler2-prediction-tab-with-confidence")

    # labeler 1 submitted the pre-annotation as shown: the UI linked it to its prediction and kept the region's
    # origin, so pull counts it as the model's guess accepted unchanged
    task = api.get(f"/api/tasks/{served}")
    (annotation,) = task["annotations"]
    assert annotation["parent_prediction"] is not None
    assert [r.get("origin") for r in annotation["result"]] == ["prediction"]
    pulled = curate_json("pull", "--project", name, "--db", db)
    assert pulled["new_annotations"] == 1 and pulled["unchanged_predictions"] == 1
