//! The vocabulary of the demo dataset (shapes, colours, sizes, positions), the geometry each
//! word stands for, the captions, and the fixed list of held-out combinations.
use serde::{Deserialize, Serialize};

/// Object shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Circle,
    Square,
    /// Isosceles, apex up, base and height equal to the extent.
    Triangle,
}

/// Object and background colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    White,
    Black,
}

/// Object sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Large,
}

/// Object positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Center,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
        }
    }
}

impl Color {
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::White,
        Color::Black,
    ];

    /// The caption word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Red => "red",
            Self::Green => "green",
            Self::Blue => "blue",
            Self::Yellow => "yellow",
            Self::White => "white",
            Self::Black => "black",
        }
    }

    /// The rendered sRGB value. Every pair of palette colours is at least 190 apart (Euclidean,
    /// 0..255 per channel), so a colour shifted by a model is still nearest to its own.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Self::Red => [220, 30, 30],
            Self::Green => [40, 200, 60],
            Self::Blue => [30, 60, 220],
            Self::Yellow => [240, 220, 40],
            Self::White => [245, 245, 245],
            Self::Black => [15, 15, 15],
        }
    }

    /// The palette colour nearest to `rgb` (Euclidean in sRGB).
    pub fn nearest(rgb: [f64; 3]) -> Color {
        let d = |c: Color| {
            let p = c.rgb();
            (0..3).map(|i| (rgb[i] - f64::from(p[i])).powi(2)).sum::<f64>()
        };
        let mut best = Color::Red;
        for c in Color::ALL {
            if d(c) < d(best) {
                best = c;
            }
        }
        best
    }
}

/// Small extent (bounding-box side as a fraction of the image side).
pub const SMALL_EXTENT: f64 = 0.22;
/// Large extent.
pub const LARGE_EXTENT: f64 = 0.42;
/// Corner anchors: the centre of a corner shape's bounding box, as a fraction of the side.
pub const NEAR: f64 = 0.27;
pub const FAR: f64 = 0.73;
/// Training images move the centre by up to this much (fraction of the side) in x and y...
pub const JITTER_OFFSET: f64 = 0.02;
/// ...and scale the extent by up to this fraction either way.
pub const JITTER_SCALE: f64 = 0.05;

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Large => "large",
        }
    }

    /// The nominal extent: bounding-box side / image side.
    pub fn extent(self) -> f64 {
        match self {
            Self::Small => SMALL_EXTENT,
            Self::Large => LARGE_EXTENT,
        }
    }
}

impl Position {
    pub const ALL: [Position; 5] = [
        Position::TopLeft,
        Position::TopRight,
        Position::BottomLeft,
        Position::BottomRight,
        Position::Center,
    ];

    /// The caption words ("top left", ..., "center").
    pub fn name(self) -> &'static str {
        match self {
            Self::TopLeft => "top left",
            Self::TopRight => "top right",
            Self::BottomLeft => "bottom left",
            Self::BottomRight => "bottom right",
            Self::Center => "center",
        }
    }

    /// The centre of the bounding box, (x, y) as fractions of the side, y down.
    pub fn anchor(self) -> (f64, f64) {
        match self {
            Self::TopLeft => (NEAR, NEAR),
            Self::TopRight => (FAR, NEAR),
            Self::BottomLeft => (NEAR, FAR),
            Self::BottomRight => (FAR, FAR),
            Self::Center => (0.5, 0.5),
        }
    }

    /// The position whose anchor is nearest to (x, y).
    pub fn nearest(x: f64, y: f64) -> Position {
        let d = |p: Position| {
            let (ax, ay) = p.anchor();
            (x - ax).powi(2) + (y - ay).powi(2)
        };
        let mut best = Position::Center;
        for p in Position::ALL {
            if d(p) < d(best) {
                best = p;
            }
        }
        best
    }
}

/// What one image shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attributes {
    pub shape: Shape,
    pub color: Color,
    pub background: Color,
    pub size: Size,
    pub position: Position,
}

impl Attributes {
    /// "a red circle".
    pub fn caption(&self) -> String {
        format!("a {} {}", self.color.name(), self.shape.name())
    }

    /// "a small red circle at the top left on a blue background" ("at the center" for the centre).
    pub fn long_caption(&self) -> String {
        format!(
            "a {} {} {} at the {} on a {} background",
            self.size.name(),
            self.color.name(),
            self.shape.name(),
            self.position.name(),
            self.background.name()
        )
    }

    /// The (object colour, shape, background) combination.
    pub fn combo(&self) -> Combo {
        Combo {
            color: self.color,
            shape: self.shape,
            background: self.background,
        }
    }
}

/// An (object colour, shape, background colour) combination; the held-out split is over these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Combo {
    pub color: Color,
    pub shape: Shape,
    pub background: Color,
}

const fn combo(color: Color, shape: Shape, background: Color) -> Combo {
    Combo {
        color,
        shape,
        background,
    }
}

/// The 18 of the 90 combinations (6 colours × 3 shapes × 5 other backgrounds) that never appear
/// in training. Fixed, not drawn: colour number i (red, green, blue, yellow, white, black) is held
/// out as a circle on colour i+1, a square on colour i+2 and a triangle on colour i+3 (mod 6).
/// So each colour is held out 3 times, each background 3 times, each shape 6 times, and every
/// pair (colour, shape), (colour, background) and (shape, background) still appears in training:
/// the held-out prompts test composition of seen parts.
pub const HELD_OUT: [Combo; 18] = {
    use Color::*;
    use Shape::*;
    [
        combo(Red, Circle, Green),
        combo(Green, Circle, Blue),
        combo(Blue, Circle, Yellow),
        combo(Yellow, Circle, White),
        combo(White, Circle, Black),
        combo(Black, Circle, Red),
        combo(Red, Square, Blue),
        combo(Green, Square, Yellow),
        combo(Blue, Square, White),
        combo(Yellow, Square, Black),
        combo(White, Square, Red),
        combo(Black, Square, Green),
        combo(Red, Triangle, Yellow),
        combo(Green, Triangle, White),
        combo(Blue, Triangle, Black),
        combo(Yellow, Triangle, Red),
        combo(White, Triangle, Green),
        combo(Black, Triangle, Blue),
    ]
};

impl Combo {
    /// Whether this combination is held out of training.
    pub fn is_held_out(&self) -> bool {
        HELD_OUT.contains(self)
    }

    /// All 90 combinations (object colour ≠ background), in vocabulary order.
    pub fn all() -> Vec<Combo> {
        let mut v = Vec::with_capacity(90);
        for color in Color::ALL {
            for shape in Shape::ALL {
                for background in Color::ALL.into_iter().filter(|&b| b != color) {
                    v.push(combo(color, shape, background));
                }
            }
        }
        v
    }

    /// The 72 combinations of the training set.
    pub fn training() -> Vec<Combo> {
        Self::all().into_iter().filter(|c| !c.is_held_out()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn captions_have_the_documented_form() {
        let a = Attributes {
            shape: Shape::Circle,
            color: Color::Red,
            background: Color::Blue,
            size: Size::Small,
            position: Position::TopLeft,
        };
        assert_eq!(a.caption(), "a red circle");
        assert_eq!(
            a.long_caption(),
            "a small red circle at the top left on a blue background"
        );
        let c = Attributes {
            position: Position::Center,
            size: Size::Large,
            ..a
        };
        assert_eq!(
            c.long_caption(),
            "a large red circle at the center on a blue background"
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"shape":"circle","color":"red","background":"blue","size":"large","position":"center"}"#
        );
    }

    #[test]
    fn held_out_list_is_balanced_and_leaves_every_pair_in_training() {
        let all = Combo::all();
        assert_eq!(all.len(), 90);
        let held: HashSet<Combo> = HELD_OUT.iter().copied().collect();
        assert_eq!(held.len(), 18, "duplicates in HELD_OUT");
        assert!(HELD_OUT.iter().all(|c| c.color != c.background && all.contains(c)));
        let train = Combo::training();
        assert_eq!(train.len(), 72);
        for c in Color::ALL {
            assert_eq!(HELD_OUT.iter().filter(|h| h.color == c).count(), 3);
            assert_eq!(HELD_OUT.iter().filter(|h| h.background == c).count(), 3);
        }
        for s in Shape::ALL {
            assert_eq!(HELD_OUT.iter().filter(|h| h.shape == s).count(), 6);
        }
        // Every pair of attributes of a held-out combination is seen in training.
        for h in HELD_OUT {
            assert!(train.iter().any(|t| t.color == h.color && t.shape == h.shape));
            assert!(train.iter().any(|t| t.color == h.color && t.background == h.background));
            assert!(train.iter().any(|t| t.shape == h.shape && t.background == h.background));
        }
    }

    #[test]
    fn palette_is_well_separated_and_nearest_works() {
        for a in Color::ALL {
            assert_eq!(Color::nearest(a.rgb().map(f64::from)), a);
            for b in Color::ALL.into_iter().filter(|&b| b != a) {
                let d: f64 = (0..3)
                    .map(|i| (f64::from(a.rgb()[i]) - f64::from(b.rgb()[i])).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(d >= 190.0, "{a:?} {b:?} {d}");
            }
        }
        for p in Position::ALL {
            let (x, y) = p.anchor();
            assert_eq!(Position::nearest(x, y), p);
            // A large shape at its anchor, at the largest jitter, stays inside the image.
            let half = LARGE_EXTENT * (1.0 + JITTER_SCALE) / 2.0;
            assert!(x - JITTER_OFFSET - half > 0.02 && x + JITTER_OFFSET + half < 0.98);
        }
    }
}
