"""The fictional numbers the sandbox places, and which of them are taken.

Every number is ``+1 <real US area code> 555-01xx``: the 555-0100..0199 block is
reserved for fiction, so nothing the sandbox hands out can ring a real phone.
"""

from __future__ import annotations

import re
import secrets

from blueline_sandbox.errors import OutOfNumbers

__all__ = ["E164", "NumberPool"]

E164 = re.compile(r"\+[1-9][0-9]{6,14}")

_AREA_CODE_TABLE = """
    201 202 203 205 206 207 208 212 213 214 215 216 217 218 219 224 225 228 229 231
    234 239 240 248 251 252 253 254 256 260 262 267 269 270 276 281 301 302 303 304
    305 307 308 309 310 312 313 314 315 316 317 318 319 320 321 323 330 334 336 337
    347 352 360 361 385 401 402 404 405 406 407 408 409 410 412 413 414 415 417 419
    423 424 425 432 434 435 440 443 469 478 479 480 484 501 502 503 504 505 507 508
    509 510 512 513 515 516 517 518 520 530 540 541 559 561 562 563 570 571 573 574
    575 580 585 586 601 602 603 605 606 607 608 609 610 612 614 615 616 617 618 619
    620 623 626 630 631 636 641 646 650 651 660 661 662 678 701 702 703 704 706 707
    708 712 713 714 715 716 717 718 719 720 724 727 731 732 734 740 754 757 760 763
    765 770 772 773 774 775 781 785 786 801 802 803 804 805 806 808 810 812 813 814
    815 816 817 818 828 830 831 832 843 845 847 850 856 857 858 859 860 862 863 864
    865 870 901 903 904 906 907 908 909 910 912 913 914 915 916 917 918 919 920 925
    928 931 936 937 940 941 949 951 952 954 956 970 971 972 973 978 979 980 985 989
"""
_AREA_CODES = tuple(_AREA_CODE_TABLE.split())


class NumberPool:
    """Numbers in use by some line; a released line gives its number back."""

    def __init__(self) -> None:
        self._in_use: set[str] = set()
        self._random = secrets.SystemRandom()

    def is_free(self, number: str) -> bool:
        return number not in self._in_use

    def claim(self, number: str) -> None:
        self._in_use.add(number)

    def free(self, number: str) -> None:
        self._in_use.discard(number)

    def pick(self) -> str:
        """A free number, not yet claimed (random first, so tests cannot rely on order)."""
        for _ in range(32):
            area = self._random.choice(_AREA_CODES)
            candidate = f"+1{area}55501{self._random.randrange(100):02d}"
            if self.is_free(candidate):
                return candidate
        # Random picks start colliding once the pool fills up; a scan still finds the rest.
        for area in _AREA_CODES:
            for suffix in range(100):
                candidate = f"+1{area}55501{suffix:02d}"
                if self.is_free(candidate):
                    return candidate
        raise OutOfNumbers("the sandbox ran out of fictional numbers")
