# nbdev-style setup.py: everything comes from settings.ini (the pkg_resources check of the template is dropped:
# current setuptools no longer ships pkg_resources).
from configparser import ConfigParser
import setuptools, shlex

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language".split()
for o in expected: assert o in cfg, f"missing expected setting: {o}"
setup_cfg = {o: cfg[o] for o in cfg_keys}

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
if cfg.get('pip_requirements'): requirements += shlex.split(cfg.get('pip_requirements', ''))
min_python = cfg['min_python']
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))
dev_requirements = (cfg.get('dev_requirements') or '').split()

# Files that ship inside the package without a second copy in git: setuptools maps the repository's data/ (the
# embedded CIFAR-10 mini images and the difficulty scores) to dd_companion/_data and nbs/experiments/ (the
# experiment notebooks the runner executes) to dd_companion/_experiments. dd_companion.core.package_dir finds them
# through importlib.resources when the package is used outside a checkout. MANIFEST.in puts them in the sdist.
shipped_dirs = {'dd_companion._data': 'data', 'dd_companion._experiments': 'nbs/experiments'}
shipped_files = {'dd_companion._data': ['README.md', 'cifar10-mini.npz'], 'dd_companion._data.scores': ['*.npz', '*.npy'],
                 'dd_companion._experiments': ['*.ipynb']}

setuptools.setup(
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]]
                + (['License :: ' + lic[1]] if lic[1] else []),
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['dd_companion', 'dd_companion.*']) + list(shipped_files),
    package_dir=shipped_dirs,
    package_data=shipped_files,
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'ray': ['ray']},
    dependency_links=cfg.get('dep_links', '').split(),
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d'],
    },
    **setup_cfg)
