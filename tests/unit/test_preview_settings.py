"""Preview settings: family defaults from the family table, and refusals that name the setting."""

import pytest

from dti.errors import InputError
from dti.families import FAMILIES
from dti.settings import DEFAULT, TrainSettings


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_unset_preview_settings_take_the_family_row(name):
    fam = FAMILIES[name]
    s = TrainSettings(preview_every=10).resolve(fam.defaults, fam.preview)
    assert (s.preview_steps, s.preview_cfg, s.preview_sampler, s.preview_scheduler, s.preview_width, s.preview_height) == (
        fam.preview.steps, fam.preview.cfg, fam.preview.sampler, fam.preview.scheduler, fam.preview.size, fam.preview.size)
    s.check()


def test_set_preview_settings_are_kept():
    fam = FAMILIES["sdxl"]
    s = TrainSettings(preview_every=5, preview_steps=8, preview_cfg=0.0, preview_sampler="euler", preview_width=512,
                      preview_height=768).resolve(fam.defaults, fam.preview)
    assert (s.preview_steps, s.preview_cfg, s.preview_sampler, s.preview_scheduler, s.preview_width, s.preview_height) == (
        8, 0.0, "euler", fam.preview.scheduler, 512, 768)


@pytest.mark.parametrize(("field", "value"), [("preview_every", -1), ("preview_steps", 0), ("preview_cfg", float("nan")),
                                              ("preview_width", 8)])
def test_preview_settings_that_cannot_work_are_refused_by_name(field, value):
    fam = FAMILIES["sd1"]
    settings = TrainSettings(**{"preview_every": 5, field: value}).resolve(fam.defaults, fam.preview)
    with pytest.raises(InputError, match=field):
        settings.check()


def test_previews_off_ignores_the_unresolved_preview_settings():
    TrainSettings(preview_every=0, preview_steps=DEFAULT).resolve(FAMILIES["sdxl"].defaults).check()
