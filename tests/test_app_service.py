"""The diagnosis service and the Diagnose page's logic without Streamlit: reading (name, bytes) items,
predicting, case calls, heat maps and the downloadable report."""

import io
import re
import time

import numpy as np
import pandas as pd
import pytest

from core.app import pdf_report, registry, report, service, session
from core.data.labels import CLASSES, SUBTYPES_BY_CLASS, pretty
from tests.app_helpers import bad_inputs, make_model_folder, png_bytes, tissue_like


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from core.model.loading import load_predictor

    return load_predictor(make_model_folder(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="module")
def sample_items(samples_dir):
    paths = sorted(samples_dir.rglob("*.png"))
    chosen = [p for p in paths if "SOB_M_PC-14-9146" in p.name] + [p for p in paths if "SOB_B_A-14-22549AB-40" in p.name]
    assert len(chosen) == 3
    return [(p.name, p.read_bytes()) for p in chosen]


def test_real_samples_get_a_full_hierarchical_diagnosis(predictor, sample_items):
    results = service.diagnose_items(predictor, sample_items, refer_threshold=0.7)
    assert [r.error for r in results] == [None] * 3
    for result in results:
        p = result.prediction
        assert sum(p.stage1.values()) == pytest.approx(1.0, abs=1e-5)
        assert sum(p.stage2.values()) == pytest.approx(1.0, abs=1e-5)
        assert set(p.stage2) == set(SUBTYPES_BY_CLASS[p.label])
        assert set(p.other_stage2) == set(SUBTYPES_BY_CLASS[CLASSES[1 - CLASSES.index(p.label)]])
        assert result.magnification_source == "file name"
        assert "demo model: not validated" in result.refer_reasons  # a demo model always refers
    assert [r.case for r in results] == ["14-9146", "14-9146", "14-22549"]
    assert {r.magnification for r in results} == {"40X", "400X"}


def test_every_bad_input_gets_a_clear_outcome_and_the_rest_still_runs(predictor, sample_items):
    bad = bad_inputs()
    results = service.diagnose_items(predictor, [(n, d) for n, (d, _) in bad.items()] + sample_items[:1])
    by_name = {r.name: r for r in results}
    for name, (_, expected) in bad.items():
        result = by_name[name]
        if expected == "error":
            assert not result.ok and result.error and name in result.error, name
        elif expected == "not histology":  # read, but no call: not H&E tissue
            assert not result.ok and result.error is None and result.not_histology, name
        else:
            assert result.ok and result.notes, f"{name}: {result.error}"
    assert "text file" in by_name["notes.txt"].error
    assert "decompression bomb" in by_name["bomb.png"].error
    assert "truncated" in by_name["truncated.png"].error
    assert "empty" in by_name["empty.png"].error
    assert "1x1" in by_name["tiny.png"].error
    assert "contains PNG" in " ".join(by_name["wrong_extension.jpg"].notes)
    assert "16-bit" in " ".join(by_name["deep16.png"].notes)
    assert "downscaled" in " ".join(by_name["large.png"].notes)
    assert by_name[sample_items[0][0]].ok


def test_several_uploads_are_decoded_in_threads_in_order_with_each_ones_own_outcome(sample_items, monkeypatch):
    """read_items decodes READ_THREADS uploads at a time (libpng and Pillow release the GIL) and gives exactly what
    reading them one after the other gives, in the same order, a bad file's error staying its own."""
    import threading

    bad = bad_inputs()
    items = sample_items[:1] + [(n, d) for n, (d, _) in bad.items()] + sample_items[1:]
    threads, read = set(), service.read_item
    monkeypatch.setattr(service, "read_item", lambda *a, **k: threads.add(threading.current_thread().name) or read(*a, **k))
    together = service.read_items(items)
    assert len(threads) == service.READ_THREADS and all(t.startswith("read-upload") for t in threads)
    one_by_one = [read(name, data, check=False) for name, data in items]
    assert [r.name for r in together] == [name for name, _ in items]
    for a, b in zip(together, one_by_one):
        assert (a.sha256, a.error, a.notes, a.magnification) == (b.sha256, b.error, b.notes, b.magnification)
        assert (a.image is None) == (b.image is None)
        assert a.image is None or (a.image.rgb == b.image.rgb).all()
    assert sum(r.error is not None for r in together) >= 4  # the bad files are refused each on its own


def test_refused_images_are_dropped_from_the_pass_that_ran_beside_their_check(predictor, sample_items, monkeypatch):
    """The pass starts before the H&E checks (they run beside it): a refused image's rows are dropped,
    the others' outputs and maps are theirs, and it was still one pass."""
    bad = bad_inputs()
    refused = [(name, bad[name][0]) for name in ("gray.png", "holiday_photo.png")]
    items = [refused[0], sample_items[0], refused[1], sample_items[1]]
    calls = count_gradcam_passes(predictor, monkeypatch)
    results, outputs = service.classify(predictor, items)
    assert calls == [4]  # all four decoded images went into the one pass
    assert [r.analysable for r in results] == [False, True, False, True]
    assert all(len(value) == 2 for value in outputs.values())
    alone, _ = service.classify(predictor, [sample_items[0], sample_items[1]])
    for kept, reference in zip([results[1], results[3]], alone):
        np.testing.assert_allclose(kept.gradcam.stage1[0], reference.gradcam.stage1[0], atol=1e-4)
    final = service.interpret(predictor, results, outputs)
    assert [r.ok for r in final] == [False, True, False, True] and final[0].not_histology


def test_a_pass_that_fails_on_a_refused_image_is_rerun_on_the_readable_ones(predictor, sample_items, monkeypatch):
    bad = bad_inputs()
    photo = bad["holiday_photo.png"][0]
    original = service.gradcam_diagnosis

    def breaks_on_the_photo(model, images, *args, **kwargs):
        if any(image.shape[:2] == (120, 160) for image in images):
            raise ValueError("this pass cannot take the photo")
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(service, "gradcam_diagnosis", breaks_on_the_photo)
    results = service.diagnose_items(predictor, [("holiday_photo.png", photo), sample_items[0]])
    assert results[0].not_histology and not results[0].ok
    assert results[1].ok and results[1].gradcam is not None and results[1].gradcam_error is None
    assert results[1].gradcam_maps() is not None


def test_magnification_comes_from_the_name_else_from_the_user(predictor):
    assert registry.magnification_from_name("SOB_B_F-14-9133-400-001.png") == "400X"
    assert registry.magnification_from_name("slide7_100x.tif") == "100X"
    assert registry.magnification_from_name("x1400 field.png") is None
    assert registry.magnification_from_name("scan.png") is None
    results = service.diagnose_items(predictor, [("scan.png", png_bytes(tissue_like())),
                                             ("b_200X.png", png_bytes(tissue_like()))], magnification="40X")
    assert (results[0].magnification, results[0].magnification_source) == ("40X", "chosen by user")
    assert (results[1].magnification, results[1].magnification_source) == ("200X", "file name")


def test_a_name_without_an_image_extension_is_read_by_content_with_a_note(predictor):
    result = service.diagnose_items(predictor, [("scan.dat", png_bytes(tissue_like()))])[0]
    assert result.ok and "'.dat'" in result.notes[0]


def test_case_calls_pool_images_per_case(predictor, sample_items):
    extra = [("field.png", png_bytes(tissue_like())), ("other.png", png_bytes(tissue_like()[::-1]))]
    results = service.diagnose_items(predictor, sample_items + extra + [("bad.png", b"")])
    cases = report.case_calls(results, refer_threshold=0.7).set_index("case")
    assert cases.loc["14-9146", "images"] == 2
    assert cases.loc["14-22549", "images"] == 1
    assert len(cases) == 2  # field.png and other.png have no case id: no case call pools them
    assert report.uncased_note(results).startswith("2 image(s) without a BreakHis case id in their names (field.png, ")
    assert set(cases["refer for review"]) == {"YES"}  # an untrained demo model is never confident
    table = report.results_table(results, registry.model_badge(predictor.card))
    assert list(table.columns) == report.TABLE_COLUMNS
    assert len(table) == 6 and table["model"].str.startswith("DEMO").all()
    assert table.loc[table["file"] == "bad.png", "error"].item().endswith("is empty (0 bytes).")


def _image(case: str, p_malignant: float, refer: bool = False) -> service.ImageResult:
    """An image result with chosen probabilities: malignant subtypes 0.7 / 0.1 / 0.1 / 0.1."""
    from core.model.predict import Prediction

    label = "malignant" if p_malignant >= 0.5 else "benign"
    malignant = dict(zip(SUBTYPES_BY_CLASS["malignant"], (0.7, 0.1, 0.1, 0.1)))
    benign = dict(zip(SUBTYPES_BY_CLASS["benign"], (0.4, 0.3, 0.2, 0.1)))
    stage2, other = (malignant, benign) if label == "malignant" else (benign, malignant)
    prediction = Prediction({"benign": 1 - p_malignant, "malignant": p_malignant}, label, stage2, other,
                            max(stage2, key=stage2.get), 0.5, refer, ["low confidence"] if refer else [])
    return service.ImageResult(name=f"{case}.png", digest=case, prediction=prediction, case=case)


def test_a_case_call_is_the_mean_of_its_images_not_their_vote():
    """Hand-worked: images at p(malignant) 0.45, 0.45, 0.9 -> mean 0.6 -> malignant (a majority vote
    or the median would say benign); subtype ductal carcinoma at 0.7; confidence 0.6 x 0.7 = 0.42."""
    results = [_image("14-1", 0.45), _image("14-1", 0.45), _image("14-1", 0.9), _image("14-2", 0.2, refer=True),
               service.ImageResult(name="bad.png", digest="x", error="unreadable", case="14-1")]
    cases = report.case_calls(results, refer_threshold=0.65).set_index("case")
    first = cases.loc["14-1"]
    assert (first["images"], first["call"], first["subtype"]) == (3, "malignant", "Ductal carcinoma")
    assert (first["p_malignant"], first["p_subtype"], first["confidence"]) == (0.6, 0.7, 0.42)
    assert first["refer for review"] == "YES" and first["reasons"] == ("case stage 1 uncertain: p(malignant) 0.60 "
                                                                       "< 0.65; images disagree (1/3 say malignant); 1 image(s) unreadable, not counted")
    second = cases.loc["14-2"]
    assert (second["call"], second["p_malignant"], second["confidence"]) == ("benign", 0.2, 0.32)
    # per stage: p(benign) 0.8 passes 0.65; p(adenosis | benign) 0.4 does not
    assert second["reasons"] == "case subtype uncertain: p(Adenosis) 0.40 < 0.65; an image is flagged"
    assert report.case_calls(results, 0.65, malignant_threshold=0.65).loc[0, "call"] == "benign"  # the validated one


def test_heat_maps_explain_the_shown_prediction_at_display_size(predictor, sample_items):
    result = service.diagnose_items(predictor, sample_items[:1])[0]
    stage1, stage2 = session.explanations(predictor, result, "gradcam")
    height, width = result.image.rgb.shape[:2]
    assert max(result.display.shape[:2]) == min(service.DISPLAY_MAX_SIDE, max(height, width))
    assert abs(result.display.shape[0] / result.display.shape[1] - height / width) < 0.01  # same aspect ratio
    assert stage1.heatmap.shape == stage2.heatmap.shape == result.display.shape[:2]
    assert (stage1.target, stage2.target) == (result.prediction.label, result.prediction.subtype)
    assert 0.0 <= stage1.heatmap.min() and stage1.heatmap.max() <= 1.0


def test_the_pdf_report_is_a_searchable_document_with_the_calls_and_the_model_identity(predictor, sample_items):
    from pypdf import PdfReader

    from core.model.heatmap import overlay

    results = service.diagnose_items(predictor, sample_items[:2] + [("broken.png", b"nope")])
    overlays = {}
    for result in results:
        if result.ok:
            maps = session.explanations(predictor, result, "gradcam")
            overlays[result.digest] = tuple(overlay(result.image.rgb, m.heatmap, 0.5) for m in maps)
    model = registry.describe_model(predictor.card)
    cases = report.case_calls(results)
    pdf = pdf_report.build_report(results, overlays, cases, model)
    reader = PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 3  # a summary, then one page per analysed image
    text = "\n".join(page.extract_text() for page in reader.pages)
    squashed = re.sub(r"\s+", "", text)  # long cells wrap; the checksum must be there, whole
    assert predictor.card["sha256"] in squashed and "DEMO MODEL" in text
    for result in results[:2]:
        p = result.prediction
        assert result.name in text and f"{p.stage1[p.label]:.3f}" in text
        assert pretty(p.label) in text and pretty(p.subtype) in text
        stage1, _ = registry.stage_calls(p, model["subtype_reliable"])
        assert stage1 == f"{pretty(p.label)} (p {p.p_label:.2f})" and stage1 in text  # its own p, not the product
    assert "Not analysed" in text and "broken.png" in text
    assert "14-9146" in text and cases.loc[cases["case"] == "14-9146", "call"].item() in text
    assert all(len(page.images) == 4 for page in reader.pages[1:])  # image, both overlays, colour bar
    table = report.results_table(results, registry.model_badge(predictor.card))
    csv = pd.read_csv(io.BytesIO(report.results_csv(table)))
    assert len(csv) == 3 and csv["error"].notna().sum() == 1


def count_gradcam_passes(predictor, monkeypatch) -> list:
    from core.model import cam as ex

    explainer = ex.explainer_for(predictor)
    calls, original = [], explainer.gradcam_pass
    monkeypatch.setattr(explainer, "gradcam_pass", lambda *args: calls.append(len(args[0])) or original(*args))
    return calls


def test_a_diagnosis_with_both_heat_maps_is_one_batched_pass_for_all_images(predictor, sample_items, monkeypatch):
    from core.model import cam as ex

    monkeypatch.setattr(session.st, "session_state", {})
    calls = count_gradcam_passes(predictor, monkeypatch)
    results = service.diagnose_items(predictor, sample_items)
    maps = [session.explanations(predictor, result, "gradcam") for result in results]
    assert calls == [3]  # one pass of the 3 images gave the predictions and all six maps
    expected = predictor.predict([r.image.rgb for r in results])
    for result, prediction, (stage1, stage2) in zip(results, expected, maps):
        assert result.prediction.stage1 == pytest.approx(prediction.stage1, abs=1e-5)
        alone = ex.explain(predictor, result.image.rgb, "gradcam", size=result.display.shape[:2]).explanations
        np.testing.assert_allclose(stage1.heatmap, alone["stage1"].heatmap, atol=1e-4)
        np.testing.assert_allclose(stage2.heatmap, alone["stage2"].heatmap, atol=1e-4)


def test_with_tta_the_maps_explain_the_tta_prediction(predictor, sample_items, monkeypatch):
    monkeypatch.setattr(session.st, "session_state", {})
    for result in service.diagnose_items(predictor, sample_items, tta=True):
        stage1, stage2 = session.explanations(predictor, result, "gradcam")
        assert (stage1.target, stage2.target) == (result.prediction.label, result.prediction.subtype)
        assert result.prediction.uncertainty["views"] == 8


def test_the_shared_queue_batches_concurrent_sessions_and_isolates_a_failing_request(predictor, sample_items):
    import threading

    from core.data.images import load_image

    images = [load_image(data, name=name).rgb for name, data in sample_items]
    alone = [service.gradcam_diagnosis(predictor, [image])[0]["stage1"][0] for image in images]
    batches = service.BatchQueue(window_s=0.5)
    requests = [[images[0]], [images[1], images[2]], [np.zeros((8, 8, 3), np.float32)]]  # the last is not uint8
    answers, barrier = [None] * 3, threading.Barrier(3)

    def session_thread(i):
        barrier.wait()
        try:
            answers[i] = batches.run(predictor, requests[i])
        except ValueError as problem:
            answers[i] = problem

    threads = [threading.Thread(target=session_thread, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert isinstance(answers[2], ValueError) and "uint8" in str(answers[2])
    np.testing.assert_allclose(answers[0][0]["stage1"][0], alone[0], atol=1e-5)
    np.testing.assert_allclose(answers[1][0]["stage1"], np.stack(alone[1:]), atol=1e-5)
    assert len(answers[1][1]) == 2
    answer = batches.run(predictor, images)  # the worker survived the failure
    assert batches.batches_run == 3  # after the shared batch failed: each good request alone, then this one
    np.testing.assert_allclose(answer[0]["stage1"], np.stack(alone), atol=1e-5)


def test_a_lone_request_runs_at_once_and_requests_waiting_behind_a_batch_share_the_next(predictor, sample_items,
                                                                                         monkeypatch):
    """No fixed wait for company (it added ~8 ms to every lone diagnosis): the first request is taken
    alone; the two that arrive while its pass runs (held here by the model's lock) form ONE next batch."""
    import threading

    from core.data.images import load_image

    images = [load_image(data, name=name).rgb for name, data in sample_items]
    calls = count_gradcam_passes(predictor, monkeypatch)
    batches = service.BatchQueue()
    answers = [None] * 3

    def session_thread(i, request):
        answers[i] = batches.run(predictor, request)

    with predictor.lock:  # the worker takes the first request, then waits here for the model
        first = threading.Thread(target=session_thread, args=(0, images[:1]))
        first.start()
        deadline = time.monotonic() + 30
        while not (batches._requests.unfinished_tasks == 1 and batches._requests.empty()) \
                and time.monotonic() < deadline:  # put by the first session, then taken by the worker
            time.sleep(0.01)
        later = [threading.Thread(target=session_thread, args=(i, [images[i]])) for i in (1, 2)]
        [t.start() for t in later]
        while batches._requests.qsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    [t.join(60) for t in [first, *later]]
    assert calls == [1, 2] and batches.batches_run == 2
    assert all(len(answer[1]) == 1 for answer in answers)


def test_moving_the_threshold_or_magnification_does_not_rerun_the_model(predictor, sample_items, monkeypatch):
    monkeypatch.setattr(session.st, "session_state", {})
    runs = count_gradcam_passes(predictor, monkeypatch)
    items = sample_items[:1] + [("field.png", png_bytes(tissue_like()))]
    strict = session.diagnose_in_session(predictor, items, tta=False, refer_threshold=0.99,
                                           magnification="not stated")
    lenient = session.diagnose_in_session(predictor, items, tta=False, refer_threshold=0.0,
                                            magnification="200X")
    assert len(runs) == 1
    assert all(any("uncertain" in reason for reason in r.refer_reasons) for r in strict)
    assert not any("uncertain" in reason for r in lenient for reason in r.refer_reasons)
    assert (strict[1].magnification, lenient[1].magnification) == ("not stated", "200X")
    assert strict[0].prediction.stage1 == lenient[0].prediction.stage1
    session.diagnose_in_session(predictor, items, tta=True, refer_threshold=0.0, magnification="200X")
    assert len(runs) == 2  # TTA changes the model run


def test_model_identity_is_the_folder_and_card_checksum(predictor):
    folder, sha = session.model_identity(predictor)
    assert folder == str(predictor.folder.resolve()) and sha == predictor.card["sha256"] and len(sha) == 64


def test_a_failing_heat_map_warm_up_does_not_stop_predictions(predictor, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise ValueError("no CAM layer")

    monkeypatch.setattr(session, "explain", broken)
    session._warm_up(predictor)  # logs, does not raise
    assert len(calls) == 1  # the warm-up did try the heat maps
    assert service.diagnose_items(predictor, [("field.png", png_bytes(tissue_like()))])[0].ok


@pytest.mark.parametrize("kind, banner", [("limited", "LIMITED DATA MODEL"), ("demo", "DEMO MODEL")])
def test_every_image_page_of_the_pdf_carries_the_model_banner(predictor, sample_items, kind, banner):
    """A limited or demo model is labelled wherever it predicts: on each image page as on each CSV row,
    not only on the summary page (an image page is often printed or passed on alone)."""
    from pypdf import PdfReader

    results = service.diagnose_items(predictor, sample_items[:2])
    overlays = {r.digest: (r.display, r.display) for r in results}
    model = {**registry.describe_model(predictor.card), "demo": kind == "demo", "limited": kind == "limited"}
    pdf = pdf_report.build_report(results, overlays, report.case_calls(results), model)
    pages = [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]
    assert len(pages) == 3 and all(banner in page for page in pages), [banner in page for page in pages]
    plain = pdf_report.build_report(results, overlays, report.case_calls(results), {**model, "demo": False, "limited": False})
    assert not any("DATA MODEL" in page or "DEMO" in page for page in
                   (p.extract_text() for p in PdfReader(io.BytesIO(plain)).pages))


def test_the_same_image_given_twice_is_analysed_once(sample_items):
    """Uploaded twice (or uploaded and picked as a sample), it would weigh double in its case and the
    two results would share one audit id."""
    first, second = sample_items[:2]
    items, repeats = service.distinct_items([first, second, first, ("renamed.png", first[1])])
    assert items == [first, second]
    assert repeats == [(first[0], first[0]), ("renamed.png", first[0])]


def test_the_shown_case_table_is_arrow_compatible_with_an_unreadable_image(predictor, sample_items):
    """Empty number cells of an image without a call next to numbers made st.dataframe's Arrow
    conversion fail (a logged traceback on every run, the numbers shown and sorted as text)."""
    import pyarrow as pa

    results = service.diagnose_items(predictor, sample_items[:1] + [("notes.txt", b"not an image")])
    table = report.results_table(results, "badge", audit_ids={(results[0].name, results[0].sha256): 7})
    shown = report.shown_table(table)
    pa.Table.from_pandas(shown)
    assert list(shown["confidence"]) == [str(table["confidence"].iloc[0]), ""] and list(shown["audit id"]) == ["7", ""]
    assert not shown.isna().any().any()  # Streamlit would print "None"
    assert report.results_csv(table).decode().splitlines()[2].count(",,") >= 1  # the CSV keeps its empty cells


def test_the_pdf_names_the_heat_map_method_its_overlays_were_drawn_with(predictor, sample_items):
    """A Score-CAM report captioned its overlays "heat map" only: a reader could not tell the method."""
    from pypdf import PdfReader

    from core.app.report import map_caption
    from core.model.heatmap import overlay

    results = service.diagnose_items(predictor, sample_items[:1])
    maps = session.explanations(predictor, results[0], "scorecam")
    overlays = {results[0].digest: tuple(overlay(results[0].display, m.heatmap, 0.5) for m in maps)}
    pdf = pdf_report.build_report(results, overlays, report.case_calls(results), registry.describe_model(predictor.card),
                              method="Score-CAM")
    text = PdfReader(io.BytesIO(pdf)).pages[1].extract_text()
    p, model = results[0].prediction, registry.describe_model(predictor.card)
    text = " ".join(text.split())  # a long caption wraps
    assert f"Stage 1 Score-CAM: {pretty(p.label)}" in text
    assert map_caption(2, "Score-CAM", p.subtype, model["subtype_reliable"]) in text  # the page's words


def test_a_case_call_says_when_an_image_of_the_case_could_not_be_read(predictor, sample_items):
    """A not-H&E image of a case was named in its call, an unreadable one silently left out."""
    name, data = sample_items[0]
    broken = name.replace(".png", "9.png")  # same patient, another image number
    results = service.diagnose_items(predictor, [(name, data), (broken, data[:400])])
    assert results[1].error and results[1].case == results[0].case
    table = report.results_table(results, "badge")
    assert list(table["case"]) == [results[0].case] * 2
    [row] = report.case_calls(results).to_dict("records")
    assert row["images"] == 1 and "1 image(s) unreadable, not counted" in row["reasons"]
