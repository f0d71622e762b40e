"""Numeric facts of the released ReWaS pipeline ("rewas-m": 5.12 s window, 16 kHz).

The one place for constants the runtime uses. Provenance: the original configs
(configs/audioldm_m_rewas.yaml, the Synchformer config, test.py defaults) as
recorded in tests/fixtures/reference/README.md and docs/design.md §4.
"""
from __future__ import annotations

# --- Audio and mel spectrogram (AudioLDM-M `preprocessing`, energy/config.json)
SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 160
WIN = 1024
N_MELS = 64
FMIN = 0.0
FMAX = 8000.0
WINDOW_SECONDS = 5.12
MEL_FRAMES = 512  # WINDOW_SECONDS * SAMPLE_RATE / HOP
WAVE_SAMPLES = MEL_FRAMES * HOP  # 81920
STFT_PAD = (N_FFT - HOP) // 2  # 432 reflect padding per side, STFT with center=False
LOG_MEL_CLAMP = 1e-5  # log(clamp(mel, min=LOG_MEL_CLAMP))
WAV_PEAK = 0.5  # normalize_wav scales the waveform to max |x| = 0.5 ...
WAV_NORM_EPS = 1e-8  # ... dividing by max|x| + WAV_NORM_EPS

# --- Video input (Synchformer test transforms)
FPS = 25
VIDEO_SECONDS = 5
FRAMES = FPS * VIDEO_SECONDS  # 125
SHORT_SIDE = 256
CROP = 224
VIDEO_MEAN = 0.5  # (x/255 - mean) / std, both in float16 in the original
VIDEO_STD = 0.5
SEGMENTS = 14
SEGMENT_LEN = 16
SEGMENT_STRIDE = 8
SEGMENT_START = 2  # segment i covers frames SEGMENT_START + SEGMENT_STRIDE*i ... + SEGMENT_LEN - 1
TOKENS_PER_SEGMENT = 8  # Synchformer temporal resolution: 16 frames / tubelet depth 2
VIDEO_FEATURE_DIM = 768  # Motionformer ViT-B width

# --- Energy control
ENERGY_STEPS = SEGMENTS * TOKENS_PER_SEGMENT  # 112: one φ output per video token
SAVGOL_WINDOW = 9
SAVGOL_ORDER = 2

# --- Latent space and VAE
LATENT_SHAPE = (8, 128, 16)  # (channels, time frames, mel frequency); 512x64 mel / 4
LOGVAR_CLAMP = (-30.0, 20.0)  # VAE posterior log-variance clamp

# --- Text conditioning (CLAP)
TEXT_EMBED_DIM = 512
UNCOND_TEXT_IDS = (0, 2)  # roberta-base tokenisation of "" (<s> </s>)
TEXT_MAX_TOKENS = 512  # the CLAP wrapper truncates at 512 tokens (RoBERTa has 514 positions)

# --- Diffusion schedule ("linear" in ddpm.py)
LINEAR_START = 0.0015
LINEAR_END = 0.0195
TRAIN_STEPS = 1000

# --- Generation defaults of the original (ReWaS.generate_sample, test.py)
DDIM_STEPS = 200
GUIDANCE = 3.0
ETA = 1.0  # DDIMSampler defaults to 0, but generate_sample passes ddim_eta=1.0

# --- Vocoder (HiFi-GAN 16 kHz, 64 mels)
VOCODER_HOP = 160
VOCODER_EXTRA_SAMPLES = 32  # output length is VOCODER_HOP * frames + 32; trim to the window
