//! The crate's error type.

/// What can go wrong transforming a clip. Bad input never panics: it ends up here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the sample's frames failed (the message names the file).
    #[error(transparent)]
    Video(#[from] video_io::Error),
    /// A clip needs at least one frame.
    #[error("empty clip: no frames")]
    EmptyClip,
    /// Every frame of a clip must have the size of the first.
    #[error("frame {index} is {got_width}x{got_height}, but frame 0 is {width}x{height}")]
    FrameSizeMismatch {
        /// Index of the offending frame.
        index: usize,
        /// Size of frame 0.
        width: u32,
        /// Size of frame 0.
        height: u32,
        /// Size of the offending frame.
        got_width: u32,
        /// Size of the offending frame.
        got_height: u32,
    },
    /// A transform would produce (or was given) an image with no pixels.
    #[error("{transform}: zero-sized image {width}x{height}")]
    EmptyImage {
        /// The transform.
        transform: &'static str,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// A crop does not fit in the image it is taken from.
    #[error(
        "{transform}: crop {crop_width}x{crop_height} does not fit in the {width}x{height} image"
    )]
    CropTooLarge {
        /// The transform.
        transform: &'static str,
        /// Crop size.
        crop_width: u32,
        /// Crop size.
        crop_height: u32,
        /// Image size.
        width: u32,
        /// Image size.
        height: u32,
    },
    /// A transform's parameters are invalid.
    #[error("{transform}: {reason}")]
    InvalidParameter {
        /// The transform.
        transform: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The choices handed to [`crate::Pipeline::apply_with`] do not match its transforms.
    #[error("choice {index} is {got}, but transform {index} is {expected}")]
    ChoiceMismatch {
        /// Index of the transform.
        index: usize,
        /// The transform's name.
        expected: &'static str,
        /// The kind of choice given.
        got: &'static str,
    },
    /// The number of choices differs from the number of transforms.
    #[error("{got} choices for a pipeline of {expected} transforms")]
    ChoiceCount {
        /// Number of transforms.
        expected: usize,
        /// Number of choices.
        got: usize,
    },
    /// [`crate::Pipeline::apply`] was used on a pipeline yielding several views.
    #[error("the pipeline yields {views} views per clip: use apply_views")]
    MultiView {
        /// Views per clip.
        views: usize,
    },
    /// A batch buffer does not match its labels.
    #[error("mixup: {len} values do not split into {batch} equal samples")]
    BatchShape {
        /// Length of the data buffer.
        len: usize,
        /// Number of labels.
        batch: usize,
    },
    /// fast_image_resize refused a resize (a bug if it happens: sizes are checked first).
    #[error("resize: {0}")]
    Resize(#[from] fast_image_resize::ResizeError),
    /// fast_image_resize refused a crop view (a bug if it happens: boxes are checked first).
    #[error("crop view: {0}")]
    CropBox(#[from] fast_image_resize::CropBoxError),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
