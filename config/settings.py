"""Settings for Compute Exchange, read from the environment.

With nothing set, the service runs on a SQLite file and an embedded
(filesystem) Celery broker, so a first run needs no server. Production and
CI set ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL`` (Redis);
production also ``CX_ENV=production``, ``DJANGO_SECRET_KEY`` and
``ALLOWED_HOSTS`` (secrets come only from the environment).
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CX_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Production (CX_ENV=production) refuses to start without a secret key and
# allowed hosts from the environment, refuses DEBUG, and turns on HTTPS-only
# cookies, HSTS and the redirect to HTTPS (behind a proxy that terminates TLS
# and sets X-Forwarded-Proto). Without it (the first run, tests) a
# development key and local hosts are used.
CX_ENV = os.environ.get("CX_ENV", "development").strip().lower()
PRODUCTION = CX_ENV == "production"
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or os.environ.get("SECRET_KEY", "")
if PRODUCTION:
    if not SECRET_KEY:
        raise ImproperlyConfigured("CX_ENV=production needs DJANGO_SECRET_KEY (at least 50 random characters)")
    if DEBUG:
        raise ImproperlyConfigured("CX_ENV=production refuses DEBUG: unset DEBUG")
    if not os.environ.get("ALLOWED_HOSTS", "").strip():
        raise ImproperlyConfigured("CX_ENV=production needs ALLOWED_HOSTS (the service's host names, comma-separated)")
elif not SECRET_KEY:
    SECRET_KEY = "insecure-development-key-set-SECRET_KEY-in-production"  # noqa: S105
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "health_check",
    "core",
    "marketplace",
    "scheduler",
    "billing",
    "vouchers",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("CONN_MAX_AGE", "60")),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's backend, with a health check that asks the server only when it has said something
    DATABASES["default"]["ENGINE"] = "core.postgresql"
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (API, worker) share the file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0

AUTH_USER_MODEL = "marketplace.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON bodies only (uploads declare multipart themselves): HTML-form parsing reads a missing
    # boolean as false and so would accept a request without its required fields.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Rate limits per scope (core/throttling.py): signed-in callers per user,
    # anonymous ones per client address. "off" (or empty) lifts a limit.
    "DEFAULT_THROTTLE_CLASSES": ["core.throttling.ScopedThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        scope: rate
        for scope, rate in (
            ("login", os.environ.get("CX_THROTTLE_LOGIN", "10/min")),
            ("register", os.environ.get("CX_THROTTLE_REGISTER", "20/hour")),
            ("quote", os.environ.get("CX_THROTTLE_QUOTE", "600/min")),
            ("submit", os.environ.get("CX_THROTTLE_SUBMIT", "300/min")),
        )
        if rate.strip().lower() not in {"", "off", "none"}
    },
    # Client addresses for per-address limits: REMOTE_ADDR, or with
    # CX_NUM_PROXIES=N the address N proxies back in X-Forwarded-For (in
    # production behind a proxy, 1 by default).
    "NUM_PROXIES": int(
        os.environ.get("CX_NUM_PROXIES", "1" if PRODUCTION and env_bool("CX_BEHIND_PROXY", True) else "0")
    ),
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Compute Exchange API",
    "DESCRIPTION": (
        "A compute-scheduling marketplace: providers list heterogeneous capacity, "
        "buyers submit jobs, the platform schedules, prices, meters, settles and "
        "applies compute vouchers (算力券)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "HubEnum": "marketplace.models.HUB_CHOICES",
        "CityEnum": "marketplace.models.CITY_CHOICES",
        "CpuArchitectureEnum": "marketplace.models.ARCHITECTURE_CHOICES",
        "SoftwareStackEnum": "marketplace.models.STACK_CHOICES",
        "VerificationStatusEnum": "marketplace.models.VerificationStatus",
        "PoolStatusEnum": "marketplace.models.PoolStatus",
        "OfferStatusEnum": "scheduler.models.OfferStatus",
        "JobStatusEnum": "scheduler.models.JobStatus",
        "LeaseStatusEnum": "scheduler.models.LeaseStatus",
        "StatementStatusEnum": "billing.models.StatementStatus",
        "HoldStatusEnum": "billing.models.HoldStatus",
        "RoleEnum": "marketplace.models.Role",
        "StatementRoleEnum": "billing.models.StatementRole",
    },
}

# Celery: Redis when CELERY_BROKER_URL is set, otherwise an embedded
# filesystem broker that needs no server.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
    CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)
# The cache holds the rate-limit counts, shared by every API process: Redis
# (CX_CACHE_URL, else the broker's Redis); without Redis a file cache under
# var/cache, which the first run's processes share.
CX_CACHE_URL = os.environ.get("CX_CACHE_URL") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else ""
)
if CX_CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CX_CACHE_URL,
            "KEY_PREFIX": "cx",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
# Scheduling: one cycle every CX_CYCLE_SECONDS over the whole market, or, with
# CX_SCHEDULER_SHARDS="JJJ,YRD,…", one cycle per hub on its own queue
# ("scheduler.<HUB>"), so N workers can each take some hubs (-Q scheduler.GZ).
CX_CYCLE_SECONDS = float(os.environ.get("CX_CYCLE_SECONDS", "15"))
CX_SCHEDULER_SHARDS = [h for h in os.environ.get("CX_SCHEDULER_SHARDS", "").split(",") if h]
CELERY_BEAT_SCHEDULE: dict[str, dict] = (
    {
        f"scheduling-cycle-{hub}": {
            "task": "scheduler.tasks.run_scheduling_cycle",
            "schedule": CX_CYCLE_SECONDS,
            "kwargs": {"hub": hub},
            "options": {"queue": f"scheduler.{hub}", "expires": CX_CYCLE_SECONDS},
        }
        for hub in CX_SCHEDULER_SHARDS
    }
    if CX_SCHEDULER_SHARDS
    else {
        "scheduling-cycle": {
            "task": "scheduler.tasks.run_scheduling_cycle",
            "schedule": CX_CYCLE_SECONDS,
            "options": {"expires": CX_CYCLE_SECONDS},
        }
    }
)
# Agents: a running lease with no heartbeat for this long is lost; a scheduled
# lease not started this long after its start is lost too.
CX_HEARTBEAT_TIMEOUT_SECONDS = float(os.environ.get("CX_HEARTBEAT_TIMEOUT_SECONDS", "90"))
CX_ACK_TIMEOUT_SECONDS = float(os.environ.get("CX_ACK_TIMEOUT_SECONDS", "300"))
CELERY_BEAT_SCHEDULE["watch-leases"] = {
    "task": "scheduler.tasks.watch_leases",
    "schedule": float(os.environ.get("CX_WATCH_SECONDS", "15")),
    "options": {"expires": 15},
}
# A cycle asked for by submissions starts at least this long after the last one started
# (scheduler/services.py: under a stream of submissions, one cycle per gap places them all).
CX_CYCLE_MIN_GAP_SECONDS = float(os.environ.get("CX_CYCLE_MIN_GAP_SECONDS", "1"))
# Workers run their tasks at this Unix niceness (0: as the API; 19: lowest): when the cores are busy the API's
# requests are served first and scheduling cycles wait, rather than requests waiting for a cycle's CPU.
CX_WORKER_NICE = int(os.environ.get("CX_WORKER_NICE", "10"))
# Quotes reuse a market snapshot this long while the market is unchanged (scheduler/selectors.py).
CX_QUOTE_SNAPSHOT_SECONDS = float(os.environ.get("CX_QUOTE_SNAPSHOT_SECONDS", "2"))
# ... and read it again when it is that old on a thread of their own (tests read it on the caller's).
CX_QUOTE_REFRESH_IN_BACKGROUND = os.environ.get("CX_QUOTE_REFRESH_IN_BACKGROUND", "1") == "1"
# Work left without progress for CX_STUCK_SECONDS (a task lost with Redis, a
# callback lost with a process) is found and repaired (scheduler/repair.py).
CX_STUCK_SECONDS = float(os.environ.get("CX_STUCK_SECONDS", "300"))
CELERY_BEAT_SCHEDULE["repair-stuck-work"] = {
    "task": "scheduler.tasks.repair_stuck_work",
    "schedule": float(os.environ.get("CX_REPAIR_SECONDS", "60")),
    "options": {"expires": 60},
}
# Billing: charge reported usage every few seconds (also kicked on each
# report); close settlement periods as they elapse (daily, CST, by default).
CX_SETTLEMENT_PERIOD_HOURS = int(os.environ.get("CX_SETTLEMENT_PERIOD_HOURS", "24"))
CELERY_BEAT_SCHEDULE["charge-usage"] = {
    "task": "billing.tasks.charge_usage",
    "schedule": float(os.environ.get("CX_CHARGE_SECONDS", "10")),
    "options": {"expires": 10},
}
CELERY_BEAT_SCHEDULE["close-settlement-periods"] = {
    "task": "billing.tasks.close_due_periods",
    "schedule": 300.0,
    "options": {"expires": 300},
}
# Vouchers: expired balances go back (or are forfeited) and redemption
# statements are drawn up as periods end.
CELERY_BEAT_SCHEDULE["expire-vouchers"] = {
    "task": "vouchers.tasks.expire_vouchers",
    "schedule": 3600.0,
    "options": {"expires": 3600},
}
CELERY_BEAT_SCHEDULE["close-redemption-statements"] = {
    "task": "vouchers.tasks.close_redemption_statements",
    "schedule": 300.0,
    "options": {"expires": 300},
}
# The audit trail: committed entries are appended to the hash chain every few seconds.
CELERY_BEAT_SCHEDULE["seal-audit-trail"] = {
    "task": "core.tasks.seal_audit_trail",
    "schedule": float(os.environ.get("CX_AUDIT_SEAL_SECONDS", "5")),
    "options": {"expires": 5},
}
# Platform commission (合作分成) by provider category; the default is 8%.
# A TrueType font (.ttf/.ttc) with Chinese glyphs to embed in statement PDFs;
# empty: a known system font if installed (fonts-wqy-microhei), else STSong-Light.
CX_PDF_CJK_FONT = os.environ.get("CX_PDF_CJK_FONT", "")

CX_COMMISSION_RATES: dict[str, str] = {"provider": os.environ.get("CX_COMMISSION_RATE", "0.08")}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    # TLS ends at the proxy in front: it must set X-Forwarded-Proto (and strip it from clients).
    if env_bool("CX_BEHIND_PROXY", True):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        USE_X_FORWARDED_HOST = env_bool("CX_USE_X_FORWARDED_HOST", False)
    SECURE_SSL_REDIRECT = env_bool("CX_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^health/$"]  # load balancers probe over plain HTTP
    SECURE_HSTS_SECONDS = int(os.environ.get("CX_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CX_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("CX_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SESSION_COOKIE_HTTPONLY = True
else:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
