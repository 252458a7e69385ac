"""The eight national hubs (国家枢纽节点), the cities the market knows, and the
network latency model used for placement constraints.

Latency model (one-way, milliseconds), from the targets of the 2023 Action
Plan for computing power infrastructure:

* same city: 1 ms (the plan's ≤ 1 ms between important facilities in a city);
* same hub, different city: fibre estimate, never above 5 ms (the plan's
  ≤ 5 ms inside a hub);
* otherwise: 1.5 × the theoretical fibre latency (the plan's inter-hub bound),
  taking the great-circle distance as the fibre route and light in fibre at
  5 µs/km, never below 1 ms.

The model is deliberately conservative: a placement promised to be within a
buyer's latency limit is one the plan's targets guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class Side(StrEnum):
    EAST = "east"  # demand hubs: latency-sensitive work stays here
    WEST = "west"  # supply hubs: cheaper, greener power (东数西算)


@dataclass(frozen=True, slots=True)
class Hub:
    code: str
    name_zh: str
    name_en: str
    side: Side


@dataclass(frozen=True, slots=True)
class City:
    code: str
    name_zh: str
    name_en: str
    latitude: float
    longitude: float
    hub: str | None  # the hub whose territory holds the city, if any
    region: str  # province-level region (used by voucher residency rules)


HUBS: dict[str, Hub] = {
    hub.code: hub
    for hub in (
        Hub("JJJ", "京津冀", "Beijing–Tianjin–Hebei", Side.EAST),
        Hub("YRD", "长三角", "Yangtze River Delta", Side.EAST),
        Hub("GBA", "粤港澳", "Guangdong–Hong Kong–Macao", Side.EAST),
        Hub("CY", "成渝", "Chengdu–Chongqing", Side.EAST),
        Hub("NMG", "内蒙古", "Inner Mongolia", Side.WEST),
        Hub("GZ", "贵州", "Guizhou", Side.WEST),
        Hub("GS", "甘肃", "Gansu", Side.WEST),
        Hub("NX", "宁夏", "Ningxia", Side.WEST),
    )
}

CITIES: dict[str, City] = {
    city.code: city
    for city in (
        # 京津冀
        City("beijing", "北京", "Beijing", 39.904, 116.407, "JJJ", "Beijing"),
        City("tianjin", "天津", "Tianjin", 39.125, 117.190, "JJJ", "Tianjin"),
        City("zhangjiakou", "张家口", "Zhangjiakou", 40.768, 114.886, "JJJ", "Hebei"),
        City("langfang", "廊坊", "Langfang", 39.538, 116.683, "JJJ", "Hebei"),
        City("shijiazhuang", "石家庄", "Shijiazhuang", 38.042, 114.514, "JJJ", "Hebei"),
        # 长三角
        City("shanghai", "上海", "Shanghai", 31.230, 121.473, "YRD", "Shanghai"),
        City("hangzhou", "杭州", "Hangzhou", 30.274, 120.155, "YRD", "Zhejiang"),
        City("jiaxing", "嘉兴", "Jiaxing", 30.746, 120.756, "YRD", "Zhejiang"),
        City("nanjing", "南京", "Nanjing", 32.060, 118.797, "YRD", "Jiangsu"),
        City("suzhou", "苏州", "Suzhou", 31.299, 120.585, "YRD", "Jiangsu"),
        City("hefei", "合肥", "Hefei", 31.821, 117.227, "YRD", "Anhui"),
        City("wuhu", "芜湖", "Wuhu", 31.353, 118.433, "YRD", "Anhui"),
        # 粤港澳
        City("guangzhou", "广州", "Guangzhou", 23.129, 113.264, "GBA", "Guangdong"),
        City("shenzhen", "深圳", "Shenzhen", 22.543, 114.058, "GBA", "Guangdong"),
        City("dongguan", "东莞", "Dongguan", 23.021, 113.752, "GBA", "Guangdong"),
        City("shaoguan", "韶关", "Shaoguan", 24.810, 113.597, "GBA", "Guangdong"),
        City("hongkong", "香港", "Hong Kong", 22.320, 114.170, "GBA", "Hong Kong"),
        City("macao", "澳门", "Macao", 22.199, 113.544, "GBA", "Macao"),
        # 成渝
        City("chengdu", "成都", "Chengdu", 30.573, 104.066, "CY", "Sichuan"),
        City("chongqing", "重庆", "Chongqing", 29.563, 106.551, "CY", "Chongqing"),
        # 内蒙古
        City("hohhot", "呼和浩特", "Hohhot", 40.842, 111.749, "NMG", "Inner Mongolia"),
        City("horinger", "和林格尔", "Horinger", 40.379, 111.822, "NMG", "Inner Mongolia"),
        City("ulanqab", "乌兰察布", "Ulanqab", 41.034, 113.133, "NMG", "Inner Mongolia"),
        City("baotou", "包头", "Baotou", 40.657, 109.840, "NMG", "Inner Mongolia"),
        # 贵州
        City("guiyang", "贵阳", "Guiyang", 26.647, 106.630, "GZ", "Guizhou"),
        City("guian", "贵安", "Gui'an", 26.370, 106.340, "GZ", "Guizhou"),
        # 甘肃
        City("qingyang", "庆阳", "Qingyang", 35.709, 107.643, "GS", "Gansu"),
        City("lanzhou", "兰州", "Lanzhou", 36.061, 103.834, "GS", "Gansu"),
        # 宁夏
        City("zhongwei", "中卫", "Zhongwei", 37.500, 105.190, "NX", "Ningxia"),
        City("yinchuan", "银川", "Yinchuan", 38.487, 106.231, "NX", "Ningxia"),
        # Cities outside the hubs, where buyers are too
        City("wuhan", "武汉", "Wuhan", 30.593, 114.305, None, "Hubei"),
        City("xian", "西安", "Xi'an", 34.341, 108.940, None, "Shaanxi"),
        City("changsha", "长沙", "Changsha", 28.228, 112.939, None, "Hunan"),
        City("zhengzhou", "郑州", "Zhengzhou", 34.747, 113.625, None, "Henan"),
        City("jinan", "济南", "Jinan", 36.651, 117.120, None, "Shandong"),
        City("qingdao", "青岛", "Qingdao", 36.067, 120.383, None, "Shandong"),
        City("shenyang", "沈阳", "Shenyang", 41.806, 123.432, None, "Liaoning"),
        City("harbin", "哈尔滨", "Harbin", 45.803, 126.535, None, "Heilongjiang"),
        City("kunming", "昆明", "Kunming", 25.039, 102.718, None, "Yunnan"),
        City("xiamen", "厦门", "Xiamen", 24.480, 118.089, None, "Fujian"),
        City("urumqi", "乌鲁木齐", "Ürümqi", 43.825, 87.617, None, "Xinjiang"),
    )
}

EARTH_RADIUS_KM = 6371.0
FIBRE_MS_PER_KM = 0.005  # light in fibre: ~5 µs per km
INTER_HUB_FACTOR = 1.5  # the plan: inter-hub latency ≤ 1.5 × theoretical
SAME_CITY_MS = 1.0
SAME_HUB_MAX_MS = 5.0


def distance_km(a: City, b: City) -> float:
    """Great-circle distance (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.latitude, a.longitude, b.latitude, b.longitude))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def latency_ms(city_a: str, city_b: str) -> float:
    """Estimated one-way network latency between two known cities, in ms."""
    a, b = CITIES[city_a], CITIES[city_b]
    if a.code == b.code:
        return SAME_CITY_MS
    estimate = max(SAME_CITY_MS, INTER_HUB_FACTOR * distance_km(a, b) * FIBRE_MS_PER_KM)
    if a.hub is not None and a.hub == b.hub:
        return round(min(SAME_HUB_MAX_MS, estimate), 3)
    return round(estimate, 3)


def latency_matrix() -> dict[tuple[str, str], float]:
    """Latency between every pair of known cities (symmetric)."""
    return {(a, b): latency_ms(a, b) for a in CITIES for b in CITIES}
