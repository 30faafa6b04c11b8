"""The soak's memory-growth figure (bench/city.py): a trend, not where the last spike fell."""

import importlib.util
import pathlib

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_city", pathlib.Path(__file__).resolve().parents[2] / "bench" / "city.py")
city = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(city)

MB = 2**20


def series(hours: float, every_s: float, base_mb: float, mb_per_h: float, spike_mb: float = 0.0,
           spike_every_s: float = 900.0, spike_len_s: float = 60.0) -> list[tuple[float, int]]:
    out, t = [], 0.0
    while t <= hours * 3600:
        mb = base_mb + mb_per_h * t / 3600
        if spike_mb and (t % spike_every_s) < spike_len_s:
            mb += spike_mb
        out.append((1000.0 + t, int(mb * MB)))
        t += every_s
    return out


def test_flat_memory_with_snapshot_spikes_is_no_growth_even_when_the_run_ends_on_a_spike():
    s = series(1.0, 10, 830, 0.0, spike_mb=40)  # t=3600 is a multiple of 900: ends on a spike
    g = city.memory_growth(s)
    assert abs(g["soak_memory_growth_pct_per_hour"]) < 0.5
    assert g["soak_memory_growth_endpoints_pct_per_hour"] > 4  # the naive figure is misled
    assert g["soak_rss_mb_after_warmup"]["max"] == 870


@pytest.mark.parametrize("rate", [10.0, 50.0, -20.0])
def test_a_steady_trend_is_measured_in_mb_and_percent_per_hour(rate):
    g = city.memory_growth(series(2.0, 30, 800, rate, spike_mb=30))
    assert g["soak_memory_growth_mb_per_hour"] == pytest.approx(rate, abs=2.0)
    mean = 800 + rate * (2 / 6 + 2) / 2  # mean RSS over the window after warm-up
    assert g["soak_memory_growth_pct_per_hour"] == pytest.approx(100 * rate / mean, abs=0.3)


def test_the_warm_up_is_left_out():
    s = [(float(t), (500 + (300 if t >= 600 else t // 2)) * MB) for t in range(0, 3601, 10)]
    g = city.memory_growth(s)  # the climb ends at 600 s, one sixth of the hour
    assert g["soak_memory_growth_mb_per_hour"] == pytest.approx(0.0, abs=0.01)
    assert g["soak_rss_mb_after_warmup"]["first"] == 800


def test_too_few_samples_give_no_figure():
    assert city.memory_growth([(0.0, MB), (10.0, MB)]) == {}
