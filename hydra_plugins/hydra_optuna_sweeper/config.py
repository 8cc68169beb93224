"""``hydra_plugins.hydra_optuna_sweeper.config``: upstream's enums and config classes, by upstream's names."""

from enum import Enum

from ghm.sweep import config

OptunaSweeperConf = config.OptunaSweeperConf
TPESamplerConfig = config.TPESamplerConf
RandomSamplerConfig = config.RandomSamplerConf
GridSamplerConfig = config.GridSamplerConf
CmaEsSamplerConfig = config.CmaEsSamplerConf
NSGAIISamplerConfig = config.NSGAIISamplerConf
MOTPESamplerConfig = config.MOTPESamplerConf
GPSamplerConfig = config.GPSamplerConf
QMCSamplerConfig = config.QMCSamplerConf


class DistributionType(Enum):
    int = 1
    float = 2
    categorical = 3


class Direction(Enum):
    minimize = 1
    maximize = 2
