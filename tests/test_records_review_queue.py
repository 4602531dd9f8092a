"""The Review queue page with more results waiting than it shows: each section says what it shows and
pages through the rest, and the reviewed results stay reachable (they were cut off behind the unreviewed ones)."""


import pytest
from streamlit.testing.v1 import AppTest

from tests.app_helpers import APP, APP_TIMEOUT, app_like_the_server, make_model_folder, tables, texts


@pytest.fixture
def app(tmp_path):
    default = make_model_folder(tmp_path / "models" / "default", demo=True)
    with pytest.MonkeyPatch.context() as patch:
        app_like_the_server(patch, tmp_path / "models", default, tmp_path / "runs")
        yield AppTest.from_file(APP, default_timeout=APP_TIMEOUT).run()


def test_included_reviewed_results_show_behind_a_full_page_of_waiting_ones(app):
    from core.store import accounts, reviews
    from core.store.audit import Store

    store = Store.open()
    accounts.add_account(store, "bob", None, "pathologist")  # the store takes reviews by accounts only
    details = {"call": "benign", "subtype": "fibroadenoma", "confidence": 0.9, "refer": False}
    [old] = store.record_many([dict(kind="diagnosis", user="ann", subject="old-reviewed.png", details=details)])
    store.record_many([dict(kind="diagnosis", user="ann", subject=f"new-{i}.png", details=details) for i in range(60)])
    reviews.review(store, "bob", old, comment="fine")
    app.switch_page("pages/review.py").run()
    assert not app.exception
    assert "Showing 1–50 of 60 results waiting for review (referred first, then oldest)." in texts(app.caption)
    assert "old-reviewed.png" not in texts(app.markdown)
    app.toggle(key="include_reviewed").set_value(True).run()
    assert not app.exception
    assert "old-reviewed.png" in texts(app.markdown) and "Reviewed by bob: agreed Benign" in texts(app.caption)
    assert "Reviewed (1)" in texts(app.subheader)
    store.close()


def test_the_worklist_pages_oldest_first_and_filters_referred_results_and_a_case(app):
    """The page served the newest 50 with no next page: the longest-waiting results were never shown."""
    from core.store.audit import Store

    store = Store.open()
    calm = {"call": "benign", "subtype": "fibroadenoma", "confidence": 0.9, "refer": False}
    ids = store.record_many([dict(kind="diagnosis", user="ann", subject=f"calm-{i:02d}.png", details=calm)
                             for i in range(55)])
    store.record("diagnosis", "ann", "SOB_M_DC-14-2523-40-001.png",
                 details={**calm, "refer": True, "refer_reasons": ["stage 1 uncertain"], "case": "14-2523"})
    store.close()
    app.switch_page("pages/review.py").run()
    assert not app.exception
    shown = cards(app)
    assert "SOB" in shown[0] and "calm-00.png" in shown[1] and len(shown) == 50  # referred, then the oldest
    assert "1 of the results waiting are referred." in texts(app.caption)
    app.number_input(key="waiting_page").set_value(2).run()
    assert not app.exception and "Showing 51–56 of 56" in texts(app.caption)
    shown = cards(app)
    assert len(shown) == 6 and f"#{ids[-1]} " in shown[-1]  # the newest last
    app.toggle(key="referred_only").set_value(True).run()
    shown = cards(app)
    assert not app.exception and len(shown) == 1 and "SOB" in shown[0]
    app.toggle(key="referred_only").set_value(False).run()
    app.text_input(key="queue_search").input("calm-07").run()
    shown = cards(app)
    assert not app.exception and len(shown) == 1 and f"#{ids[7]} " in shown[0]


def test_agreeing_while_a_corrected_class_is_chosen_is_refused_on_the_page(app):
    """'agree' left on while Class = Malignant was chosen saved an agreement with the model's benign call."""
    from core.store.audit import Store

    store = Store.open()
    row = store.record("diagnosis", "ann", "SOB_B_A-14-22549AB-40-001.png",
                       details={"call": "benign", "subtype": "adenosis", "confidence": 0.24, "refer": False})
    app.switch_page("pages/review.py").run()
    app.selectbox(key=f"label_queue_{row}").set_value("malignant")
    app.text_input(key=f"comment_queue_{row}").input("this is malignant")
    app.button(key=f"FormSubmitter:review_queue_{row}-Save review").click().run()
    assert not app.exception and "Review saved" not in texts(app.success)
    assert "'agree' was chosen, but Malignant is not the model's call (Benign, Adenosis)" in texts(app.error)
    assert not store.events(kinds="review")
    store.close()


def test_a_queue_review_without_the_image_needs_the_original_reviewed(app):
    """Images not kept (the default): 'agree' was saved from the queue with the image never shown."""
    from core.store import reviews
    from core.store.audit import Store

    store = Store.open()
    row = store.record("diagnosis", "ann", "SOB_B_A-14-22549AB-40-001.png",
                       details={"call": "benign", "subtype": "adenosis", "confidence": 0.9, "refer": False})
    app.switch_page("pages/review.py").run()
    assert "Review the original image or glass slide before saving a review here." in texts(app.caption)
    app.button(key=f"FormSubmitter:review_queue_{row}-Save review").click().run()
    assert not app.exception and "the image is not shown here" in texts(app.error)
    assert not store.events(kinds="review")
    app.checkbox(key=f"original_queue_{row}").check()
    app.button(key=f"FormSubmitter:review_queue_{row}-Save review").click().run()
    [saved] = store.events(kinds="review")
    assert not app.exception and saved["details"]["image_shown"] is False and saved["details"]["agree"] is True
    app.toggle(key="include_reviewed").set_value(True).run()
    assert "(on the original; the image was not shown)" in texts(app.caption)
    assert reviews.ORIGINAL_REVIEWED in [c.label for c in app.checkbox]
    store.close()


def test_a_review_is_saved_when_its_card_left_the_list_before_save(app):
    """A correction on the last card was thrown away, with no message, when a newer referred result pushed
    the card off the page before Save: a form that is not drawn again loses its submit."""
    from core.store.audit import Store

    store = Store.open()
    calm = {"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.9, "refer": False}
    ids = store.record_many([dict(kind="diagnosis", user="ann", subject=f"f{i}.png", details=calm) for i in range(50)])
    last = ids[-1]  # the 50th card
    app.switch_page("pages/review.py").run()
    app.radio(key=f"verdict_queue_{last}").set_value("correct")
    app.selectbox(key=f"subtype_queue_{last}").set_value("fibroadenoma")
    app.text_input(key=f"comment_queue_{last}").input("clearly a fibroadenoma")
    app.checkbox(key=f"original_queue_{last}").check()
    store.record("diagnosis", "ann", "new.png", details={**calm, "refer": True, "refer_reasons": ["stage 1 uncertain"]})
    app.button(key=f"FormSubmitter:review_queue_{last}-Save review").click().run()
    assert not app.exception and f"#{last} " not in "\n".join(cards(app))  # the card is on page 2 now
    [saved] = store.events(kinds="review")
    assert saved["refers_to"] == last and saved["details"]["subtype"] == "fibroadenoma"
    assert f"Review saved (audit #{saved['id']}) for result #{last}." in texts(app.success)
    app.run()
    assert "Review saved" not in texts(app.success)  # said once
    store.close()


def test_a_second_reviewer_is_told_and_their_review_is_kept_as_a_second_opinion(app):
    """Bob agreed while Carol's form was open; Carol's correction vanished with her card, unsaved and unsaid."""
    from core.store import accounts, reviews
    from core.store.audit import Store

    store = Store.open()
    accounts.add_account(store, "bob", None, "pathologist")  # the store takes reviews by accounts only
    row = store.record("diagnosis", "ann", "SOB_M_DC-14-2523-40-010.png",
                       details={"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.6, "refer": True,
                                "refer_reasons": ["stage 1 uncertain"]})
    app.switch_page("pages/review.py").run()
    app.radio(key=f"verdict_queue_{row}").set_value("correct")
    app.selectbox(key=f"label_queue_{row}").set_value("benign")
    app.checkbox(key=f"original_queue_{row}").check()
    first = reviews.review(store, "bob", row, comment="agree")  # saved in another tab meanwhile
    app.button(key=f"FormSubmitter:review_queue_{row}-Save review").click().run()
    assert not app.exception
    first_review, second = store.events(kinds="review", newest_first=False)
    assert first_review["id"] == first and second["details"]["label"] == "benign" and second["details"]["agree"] is False
    assert (f"Result #{row} was reviewed meanwhile by bob at {first_review['at']:%Y-%m-%d %H:%M} UTC (agreed "
            f"Malignant, subtype not assessed). Your review was saved as a second opinion (audit #{second['id']})") in (
        texts(app.warning))
    assert "The reviews disagree: the queue marks the result discordant." in texts(app.warning)
    store.close()


def test_discordant_reviews_are_flagged_on_the_card_and_in_the_queue_and_a_self_review_is_marked(app):
    """Carol's correction silently replaced Bob's agreement on the card; Ann agreeing with her own call
    read as any other review."""
    from core.store import accounts, reviews
    from core.store.audit import Store

    store = Store.open()
    for name in ("bob", "carol", "ann"):  # the store takes reviews by accounts only
        accounts.add_account(store, name, None, "pathologist")
    call = {"call": "malignant", "subtype": "ductal_carcinoma", "confidence": 0.7, "refer": False,
            "subtype_reliable": True}  # a model whose subtype is reliable: "agree" confirms it
    split = store.record("diagnosis", "ann", "split.png", details=call)
    mine = store.record("diagnosis", "ann", "mine.png", details=call)
    reviews.review(store, "bob", split, comment="agree")
    reviews.review(store, "carol", split, label="benign", comment="benign")
    reviews.review(store, "ann", mine, comment="mine")
    app.switch_page("pages/review.py").run()
    assert not app.exception
    assert "1 reviewed result has discordant reviews (reviewers disagree)" in texts(app.warning)
    app.toggle(key="include_reviewed").set_value(True).run()
    assert not app.exception
    assert ("Discordant reviews: the reviewers disagree. Reviewed by bob: agreed Malignant, Ductal carcinoma — agree; "
            "Reviewed by carol: corrected to Benign, subtype not assessed — benign") in texts(app.warning)
    assert "Reviewed by ann (self-review): agreed Malignant, Ductal carcinoma — mine" in texts(app.caption)
    app.toggle(key="discordant_only").set_value(True).run()
    assert not app.exception and [f"#{split} " in c for c in cards(app)] == [True]
    store.close()


def cards(app) -> list[str]:
    """Each card's header line, as a reader sees it."""
    return [texts([m]) for m in app.markdown if m.value.startswith("**#")]


def test_a_review_inserted_by_hand_is_left_out_and_the_page_says_how_many(app):
    """A review row inserted with raw SQL (no chain hash) showed as a pathologist's review and took its result
    off the worklist, until someone ran `db verify`; the queue left it out, but the Case history below still
    listed it as genuine (QA review #1)."""
    from sqlalchemy import text

    from core.store.audit import Store

    store = Store.open()
    row = store.record("diagnosis", "ann", "SOB_B_A-14-22549AB-40-001.png",
                       details={"call": "benign", "subtype": "adenosis", "confidence": 0.9, "refer": False,
                                "case": "14-22549"})
    with store.engine.begin() as connection:
        connection.execute(text("INSERT INTO audit (id, at, kind, \"user\", refers_to, details) VALUES (:id, "
                                "'2020-01-01 09:00:00', 'review', 'dr_chief', :row, '{\"agree\": true, \"label\": "
                                "\"benign\", \"subtype\": \"adenosis\"}')"), {"id": row + 1, "row": row})
    app.switch_page("pages/review.py").run()
    assert not app.exception and f"#{row} " in "\n".join(cards(app))  # still waiting
    assert ("1 audit row of results or reviews fails the audit trail's hash chain" in texts(app.error)
            and "`python -m core db verify`" in texts(app.error))
    app.toggle(key="include_reviewed").set_value(True).run()
    assert "dr_chief" not in texts(app.caption) and "Reviewed (0)" in texts(app.subheader)
    app.text_input(key="history_case").input("14-22549").run()
    [history] = tables(app, "file")
    assert list(history["id"]) == [row] and "dr_chief" not in set(history["user"])
    assert "left out of this queue and of case histories" in texts(app.error)
    store.close()
